//go:build linux

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// component is one process the lab runs on the node.
type component struct {
	name    string
	bin     string
	args    []string
	inNode  bool                            // run in the node's network namespace
	netns   string                          // else in this one, if set
	ready   func(ctx context.Context) error // nil error once it serves
	timeout time.Duration                   // how long ready may take
}

func (p Paths) pidFile(name string) string { return p.state("run", name+".pid") }

// LogFile is where a component's output goes.
func (p Paths) LogFile(name string) string { return p.state("logs", name+".log") }

// running returns the pid of the component if the process recorded for it
// still runs the same binary: a recycled pid is not ours.
func running(p Paths, c component) (int, bool) {
	b, err := os.ReadFile(p.pidFile(c.name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, processRuns(pid, c.bin)
}

// processRuns reports whether pid is alive (not a zombie) and runs bin.
func processRuns(pid int, bin string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmdline) == 0 {
		return false // gone, or a zombie
	}
	argv0, rest, _ := bytes.Cut(cmdline, []byte{0})
	if string(argv0) == bin {
		return true
	}
	// Just started in the node's namespace: nsenter has not exec'd it yet.
	return string(argv0) == "nsenter" && bytes.Contains(rest, []byte("\x00"+bin+"\x00"))
}

// start runs the component detached from the caller (its own session, so
// it outlives `lab up`), unless it already runs, and waits until it is ready.
func start(ctx context.Context, p Paths, c component) error {
	if _, ok := running(p, c); ok {
		err := waitReady(ctx, p, c, func() bool { _, ok := running(p, c); return ok })
		if _, still := running(p, c); err == nil || still {
			return err
		}
		// It was on its way out (stopped by hand just before): start anew.
	}
	if err := os.MkdirAll(filepath.Dir(p.LogFile(c.name)), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.pidFile(c.name)), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(p.LogFile(c.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- lab: starting %s at %s\n", c.name, time.Now().Format(time.RFC3339))

	var cmd *exec.Cmd
	switch {
	case c.inNode:
		cmd = inNode(c.bin, c.args...)
	case c.netns != "":
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + c.netns, "--", c.bin}, c.args...)...)
	default:
		cmd = exec.Command(c.bin, c.args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	// Reap it if it dies while we still run (once we exit, init does), and
	// learn so from Wait: its command line says nothing reliable until
	// nsenter has exec'd it.
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := writeFileAtomic(p.pidFile(c.name), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	// Until the child has exec'd, its command line is ours: wait for it, so
	// that running() knows the process as soon as start returns.
	for deadline := time.Now().Add(5 * time.Second); !processRuns(cmd.Process.Pid, c.bin) && time.Now().Before(deadline); {
		select {
		case <-exited:
			return componentFailed(p, c, errors.New("it exited"))
		case <-time.After(10 * time.Millisecond):
		}
	}
	return waitReady(ctx, p, c, func() bool {
		select {
		case <-exited:
			return false
		default:
			return true
		}
	})
}

// waitReady polls the component's readiness; a failure names the component
// and shows the end of its log.
func waitReady(ctx context.Context, p Paths, c component, alive func() bool) error {
	if c.ready == nil {
		return nil
	}
	timeout := c.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if !alive() {
			return componentFailed(p, c, errors.New("it exited"))
		}
		if last = c.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return componentFailed(p, c, fmt.Errorf("not ready after %s: %v", timeout, last))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func componentFailed(p Paths, c component, err error) error {
	log, _ := os.ReadFile(p.LogFile(c.name))
	return fmt.Errorf("%s failed to start: %w\n--- last lines of %s:\n%s", c.name, err, p.LogFile(c.name), tail(string(log), 25))
}

// stop ends the component: SIGTERM, then SIGKILL after the grace period.
func stop(p Paths, c component, grace time.Duration) error {
	pid, ok := running(p, c)
	if ok {
		if err := terminate(pid, func() bool { return processRuns(pid, c.bin) }, grace); err != nil {
			return fmt.Errorf("stop %s: %w", c.name, err)
		}
	}
	if err := os.Remove(p.pidFile(c.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// terminate ends a process: SIGTERM, then SIGKILL once the grace period
// is over; alive says whether it is still the process we mean.
func terminate(pid int, alive func() bool, grace time.Duration) error {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if !alive() {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("process %d survived SIGKILL", pid)
}

// pidAlive reports whether pid names a live process (not a zombie).
func pidAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil
}

// probe runs a command in the node's namespace; it is ready when the
// command exits 0. Health endpoints listen on the node's loopback, which only
// a process inside the namespace reaches.
func probe(args ...string) func(context.Context) error {
	return func(ctx context.Context) error {
		cmd := inNode(args[0], args[1:]...)
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

func httpProbe(url string) func(context.Context) error {
	return probe("curl", "-skf", "--max-time", "2", url)
}
