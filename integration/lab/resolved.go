//go:build linux

package lab

import (
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

// Resolved is a real systemd-resolved serving one laptop, as on a desktop
// Linux: its stub at 127.0.0.53 is the laptop's resolver and the lab's
// upstream DNS its global server. It runs in the laptop's network
// namespace and a mount namespace of its own (its /run/systemd, a passwd
// naming its user), on a private D-Bus system bus whose address is Bus:
// processes that should see it (the tunnel daemon) get
// DBUS_SYSTEM_BUS_ADDRESS=Bus. Debian's package is downloaded and unpacked
// into the lab's cache, never installed, so the machine's own DNS is not
// touched.
type Resolved struct {
	Bus        string // a D-Bus address
	resolvectl string // the package's resolvectl
	LibPath    string // LD_LIBRARY_PATH its binaries need
	laptop     Laptop
	dir        string
	resolvConf []byte // the laptop's resolv.conf before
	pids       []int
}

// resolvedPackages are unpacked together, so the binaries and the private
// library they link are one version whatever the machine has.
var resolvedPackages = []string{"systemd-resolved", "libsystemd-shared"}

// ensureResolvedPackage downloads and unpacks systemd-resolved once, into
// the cache.
func ensureResolvedPackage(ctx context.Context, p Paths) (string, error) {
	return unpackedPackages(ctx, p, "systemd-resolved", "lib/systemd/systemd-resolved", resolvedPackages...)
}

// StartResolved runs systemd-resolved for a laptop and points the laptop's
// resolv.conf at its stub, as systemd does; Stop undoes both.
func StartResolved(ctx context.Context, p Paths, laptop string) (*Resolved, error) {
	l, err := ensureLaptop(ctx, p, laptop)
	if err != nil {
		return nil, err
	}
	root, err := ensureResolvedPackage(ctx, p)
	if err != nil {
		return nil, err
	}
	dir := p.state("resolved", laptop)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Resolved{
		Bus:        "unix:path=" + filepath.Join(dir, "bus.sock"),
		resolvectl: filepath.Join(root, "usr/bin/resolvectl"),
		LibPath:    filepath.Join(root, "usr/lib/x86_64-linux-gnu/systemd"),
		laptop:     l,
		dir:        dir,
	}
	if r.resolvConf, err = os.ReadFile(l.ResolvConf()); err != nil {
		return nil, err
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return nil, err
	}
	group, err := os.ReadFile("/etc/group")
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		"passwd": string(passwd) + "systemd-resolve:x:991:991:systemd-resolved:/:/usr/sbin/nologin\n",
		"group":  string(group) + "systemd-resolve:x:991:\n",
		// Global DNS is the lab's upstream, as DHCP would have set it.
		"resolved.conf": "[Resolve]\nDNS=" + nodeAddr.String() + "\nDomains=lab.test\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n",
		"bus.conf": `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=` + filepath.Join(dir, "bus.sock") + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`,
	}
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(filepath.Join(dir, "run"), 991, 991); err != nil { // resolved insists on owning it
		return nil, err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	// In its own mount namespace: resolved's user exists, its /run (with
	// its configuration) is private to it, whether or not the machine has
	// a /run/systemd.
	script := fmt.Sprintf(`set -e
mount --bind %[1]s/passwd /etc/passwd
mount --bind %[1]s/group /etc/group
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/resolved.conf.d /run/systemd/resolve
mount --bind %[1]s/run /run/systemd/resolve
cp %[1]s/resolved.conf /run/systemd/resolved.conf.d/lab.conf
dbus-daemon --config-file=%[1]s/bus.conf --fork --print-pid > %[1]s/dbus.pid
i=0; while [ ! -S %[1]s/bus.sock ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.05; done
exec %[2]s/lib/systemd/systemd-resolved`, dir, root)
	logf, err := os.Create(filepath.Join(dir, "resolved.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", l.Netns, "unshare", "-m", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+r.Bus, "LD_LIBRARY_PATH="+r.LibPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r.pids = append(r.pids, cmd.Process.Pid)
	go func() { _ = cmd.Wait() }()

	// Ready when resolved answers on the bus.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := r.Resolvectl(ctx, "status")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "resolved.log"))
			r.Stop()
			return nil, fmt.Errorf("systemd-resolved for laptop %s did not start: %v\n%s\n%s", laptop, err, out, tail(string(log), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "dbus.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			r.pids = append(r.pids, pid)
		}
	}
	// As systemd sets it up: resolv.conf is resolved's stub file, which it
	// rewrites as links come and go (their search domains with them).
	stub := filepath.Join(dir, "run", "stub-resolv.conf")
	for i := 0; ; i++ {
		if _, err := os.Stat(stub); err == nil {
			break
		}
		if i > 100 {
			r.Stop()
			return nil, fmt.Errorf("systemd-resolved for laptop %s wrote no %s", laptop, stub)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.Remove(l.ResolvConf())
	if err := os.Symlink(stub, l.ResolvConf()); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

// Resolvectl runs the package's resolvectl against this resolved.
func (r *Resolved) Resolvectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", r.laptop.Netns, r.resolvectl, "--no-pager"}, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+r.Bus, "LD_LIBRARY_PATH="+r.LibPath)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Stop ends resolved and its bus and gives the laptop its resolv.conf back.
func (r *Resolved) Stop() error {
	var errs []error
	for _, pid := range r.pids {
		_ = terminate(pid, func() bool { return pidAlive(pid) }, 5*time.Second)
	}
	if r.resolvConf != nil {
		_ = os.Remove(r.laptop.ResolvConf()) // our symlink
		if err := os.WriteFile(r.laptop.ResolvConf(), r.resolvConf, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(r.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
