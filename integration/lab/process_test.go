//go:build linux

package lab

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestStartStop(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	p := Paths{State: t.TempDir()}
	c := component{name: "sleeper", bin: sleep, args: []string{"60"}}
	if err := start(context.Background(), p, c); err != nil {
		t.Fatal(err)
	}
	pid, ok := running(p, c)
	if !ok {
		t.Fatal("not running after start")
	}
	// Starting again keeps the same process.
	if err := start(context.Background(), p, c); err != nil {
		t.Fatal(err)
	}
	if again, _ := running(p, c); again != pid {
		t.Fatalf("second start replaced pid %d with %d", pid, again)
	}
	if err := stop(p, c, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ok := running(p, c); ok {
		t.Fatal("still running after stop")
	}
}

func TestStartReportsAnExitWithItsLog(t *testing.T) {
	sh, _ := exec.LookPath("sh")
	p := Paths{State: t.TempDir()}
	c := component{
		name: "crasher", bin: sh, args: []string{"-c", "echo 'bad flag --x'; exit 3"},
		ready: func(context.Context) error { return context.DeadlineExceeded },
	}
	err := start(context.Background(), p, c)
	if err == nil || !strings.Contains(err.Error(), "crasher failed to start") || !strings.Contains(err.Error(), "bad flag --x") {
		t.Fatalf("start of a crashing component: %v", err)
	}
}

func TestRunningIgnoresARecycledPid(t *testing.T) {
	p := Paths{State: t.TempDir()}
	c := component{name: "x", bin: "/nonexistent/binary"}
	// Our own pid runs, but not that binary.
	if err := writeFileAtomic(p.pidFile("x"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := running(p, c); ok {
		t.Fatal("a pid running another binary counted as the component")
	}
}
