//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A laptop is a network namespace joined to the node by a veth pair: the
// developer's machine in the lab. It has a default route through the node,
// as a real laptop has one, and its own resolv.conf naming the lab's
// upstream resolver (`ip netns exec` bind-mounts /etc/netns/NS/resolv.conf
// over /etc/resolv.conf), so the machine's own resolver is never touched.
type Laptop struct {
	Name  string
	Netns string
	Addr  netip.Addr // the laptop's address on its link
	Gw    netip.Addr // the node's side of the link
}

var laptopName = regexp.MustCompile(`^[a-z][a-z0-9]{0,10}$`)

const laptopNetnsPrefix = "tlab-laptop-"

// ResolvConf is the laptop's resolver configuration file, which tools like
// `tunnel connect` change and must restore.
func (l Laptop) ResolvConf() string {
	return filepath.Join("/etc/netns", l.Netns, "resolv.conf")
}

// HostsEntry gives a laptop a name in a hosts file of its own (the
// machine's /etc/hosts and the line "ADDR NAME"; `ip netns exec`
// bind-mounts it over /etc/hosts as it does resolv.conf), for measuring a
// name glibc answers without DNS. remove takes it away again.
func (l *Lab) HostsEntry(ctx context.Context, laptop, name string, addr netip.Addr) (remove func() error, err error) {
	lp, err := ensureLaptop(ctx, l.Paths, laptop)
	if err != nil {
		return nil, err
	}
	base, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return nil, err
	}
	path := filepath.Join("/etc/netns", lp.Netns, "hosts")
	if err := os.WriteFile(path, fmt.Appendf(base, "\n%s %s\n", addr, name), 0o644); err != nil {
		return nil, err
	}
	return func() error { return os.Remove(path) }, nil
}

func (p Paths) laptopIndexFile(name string) string { return p.state("laptops", name) }

// laptopFor returns a laptop's addressing, allocating a link the first time.
func laptopFor(p Paths, name string) (Laptop, error) {
	if !laptopName.MatchString(name) {
		return Laptop{}, fmt.Errorf("laptop name %q must be 1 to 11 lowercase letters and digits, starting with a letter", name)
	}
	idx, err := laptopIndex(p, name)
	if err != nil {
		return Laptop{}, err
	}
	base := laptopRange.Addr().As4()
	off := idx * 4
	base[2], base[3] = byte(off>>8), byte(off)
	net := netip.AddrFrom4(base)
	return Laptop{Name: name, Netns: laptopNetnsPrefix + name, Gw: net.Next(), Addr: net.Next().Next()}, nil
}

// laptopIndex reads or allocates the laptop's slot: the lowest one free.
func laptopIndex(p Paths, name string) (int, error) {
	if b, err := os.ReadFile(p.laptopIndexFile(name)); err == nil {
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
	used := map[int]bool{}
	entries, _ := os.ReadDir(p.state("laptops"))
	for _, e := range entries {
		if b, err := os.ReadFile(p.laptopIndexFile(e.Name())); err == nil {
			if i, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				used[i] = true
			}
		}
	}
	for i := 0; i < 1<<13; i++ { // the upper half is the laptops' roaming links

		if !used[i] {
			return i, writeFileAtomic(p.laptopIndexFile(name), []byte(strconv.Itoa(i)+"\n"), 0o644)
		}
	}
	return 0, errors.New("no free laptop links are left: remove some with lab down")
}

// ensureLaptop creates the laptop's namespace and link when missing.
func ensureLaptop(ctx context.Context, p Paths, name string) (Laptop, error) {
	if !netnsExists(nodeNetns) {
		return Laptop{}, errNotUp
	}
	l, err := laptopFor(p, name)
	if err != nil {
		return Laptop{}, err
	}
	// Written once: from then on it is the laptop's own, which tools such as
	// `tunnel connect` change in place and must restore.
	if _, err := os.Stat(l.ResolvConf()); errors.Is(err, os.ErrNotExist) {
		if err := writeFileAtomic(l.ResolvConf(), []byte(laptopResolvConf()), 0o644); err != nil {
			return Laptop{}, fmt.Errorf("write resolv.conf of laptop %s: %w", name, err)
		}
	}
	if netnsExists(l.Netns) && linkExists(ctx, l.Netns, "eth0") {
		return l, nil
	}
	if err := createLaptop(ctx, l); err != nil {
		removeLaptop(ctx, p, name)
		return Laptop{}, fmt.Errorf("create laptop %s: %w", name, err)
	}
	return l, nil
}

func laptopResolvConf() string {
	return fmt.Sprintf("# The lab's upstream resolver: what this laptop used before any tunnel.\nnameserver %s\nsearch %s\n", nodeAddr, upstreamZone)
}

func createLaptop(ctx context.Context, l Laptop) error {
	if !netnsExists(l.Netns) {
		if _, err := run(ctx, "ip", "netns", "add", l.Netns); err != nil {
			return err
		}
	}
	nodeSide := "lap-" + l.Name
	steps := [][]string{
		{"-n", l.Netns, "link", "set", "lo", "up"},
		{"-n", nodeNetns, "link", "add", nodeSide, "type", "veth", "peer", "name", "eth0", "netns", l.Netns},
		{"-n", nodeNetns, "addr", "add", l.Gw.String() + "/30", "dev", nodeSide},
		{"-n", nodeNetns, "link", "set", nodeSide, "up"},
		{"-n", l.Netns, "addr", "add", l.Addr.String() + "/30", "dev", "eth0"},
		{"-n", l.Netns, "link", "set", "eth0", "up"},
		{"-n", l.Netns, "route", "add", "default", "via", l.Gw.String()},
	}
	for _, s := range steps {
		if _, err := run(ctx, "ip", s...); err != nil {
			return err
		}
	}
	return nil
}

// removeLaptop deletes a laptop's namespace (its veth pair goes with it),
// its resolv.conf folder and its slot.
func removeLaptop(ctx context.Context, p Paths, name string) error {
	ns := laptopNetnsPrefix + name
	var errs []error
	// What runs in the laptop (a tunnel daemon, say) goes with it.
	if out, err := run(ctx, "ip", "netns", "pids", ns); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = terminate(pid, func() bool { return pidAlive(pid) }, 5*time.Second)
			}
		}
	}
	if netnsExists(ns) {
		if _, err := run(ctx, "ip", "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join("/etc/netns", ns)); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(p.laptopIndexFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// laptops lists the laptops that exist: namespaces with the lab's prefix.
func laptops() []string {
	entries, _ := os.ReadDir("/run/netns")
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutPrefix(e.Name(), laptopNetnsPrefix); ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// ExecOptions says where and as whom `lab exec` runs a command.
type ExecOptions struct {
	Laptop string   // laptop name; "" means the node's namespace
	User   string   // "admin" or "dev"
	Env    []string // more environment, KEY=VALUE
}

// Command returns a command that runs in a laptop (or the node) with
// KUBECONFIG set for the user and the lab's kubectl first on PATH.
func Command(ctx context.Context, p Paths, opt ExecOptions, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("name a command to run, after --")
	}
	kubeconfig := p.AdminKubeconfig()
	switch opt.User {
	case "", "admin":
	case "dev":
		kubeconfig = p.DevKubeconfig()
	default:
		return nil, fmt.Errorf("unknown user %q: use admin or dev", opt.User)
	}
	var cmd *exec.Cmd
	if opt.Laptop == "" {
		if !netnsExists(nodeNetns) {
			return nil, errNotUp
		}
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + nodeNetns, "--"}, argv...)...)
	} else {
		l, err := ensureLaptop(ctx, p, opt.Laptop)
		if err != nil {
			return nil, err
		}
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Netns}, argv...)...)
	}
	cmd.Env = append(os.Environ(),
		"KUBECONFIG="+kubeconfig,
		"PATH="+p.KubernetesBin()+":"+os.Getenv("PATH"),
	)
	cmd.Env = append(cmd.Env, opt.Env...)
	return cmd, nil
}
