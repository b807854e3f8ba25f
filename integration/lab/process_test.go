//go:build linux

package lab

import (
	"context"
	"os"
	"os/exec"
	"strconv"
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

// `lab up` right after a part was told to stop (an API server shutting
// down): the old process still runs but will not get ready; once it exits,
// start runs a new one instead of failing.
func TestStartReplacesAPartOnItsWayOut(t *testing.T) {
	sh, _ := exec.LookPath("sh")
	p := Paths{State: t.TempDir()}
	marker := p.state("ready")
	// Ready once a process of ours has written the marker; the first one is
	// on its way out and never writes it.
	c := component{name: "leaving", bin: sh, args: []string{"-c", "sleep 0.5; touch " + marker + "; while :; do sleep 0.2; done"},
		ready: func(context.Context) error {
			if _, err := os.Stat(marker); err != nil {
				return err
			}
			return nil
		}}
	old := exec.Command(sh, "-c", "sleep 1")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	go old.Wait()
	if err := writeFileAtomic(p.pidFile(c.name), []byte(strconv.Itoa(old.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Start returns once the child began its exec, which may not have set
	// the new command line yet: /proc shows none for a moment.
	for i := 0; ; i++ {
		if _, ok := running(p, c); ok {
			break
		}
		if i == 100 {
			t.Fatal("the leaving process does not count as running")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := start(context.Background(), p, c); err != nil {
		t.Fatalf("start after the old process left: %v", err)
	}
	pid, ok := running(p, c)
	if !ok || pid == old.Process.Pid {
		t.Fatalf("running %d %v, want a new process", pid, ok)
	}
	if err := stop(p, c, 2*time.Second); err != nil {
		t.Fatal(err)
	}
}
