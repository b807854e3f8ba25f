//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// machineState is what the lab may change on the machine outside its own
// folders. Up records it before touching anything; down compares against it,
// so "leaves the machine as it found it" is checked, not hoped.
type machineState struct {
	Links     []string `json:"links"`
	Routes    []string `json:"routes"`
	Rules     []string `json:"rules"`
	Netns     []string `json:"netns"`
	Mounts    []string `json:"mounts"`
	Iptables  []string `json:"iptables"`
	Paths     []string `json:"paths"`
	Processes []string `json:"processes"`
	Cgroups   []string `json:"cgroups"`
}

// wellKnownPaths are where Kubernetes parts write by default; the lab points
// them all at its state folder, and the snapshot shows none appeared.
var wellKnownPaths = []string{
	"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/etc/kubernetes",
	"/var/lib/cni", "/etc/cni/net.d", "/run/containerd/runc/k8s.io", "/var/lib/etcd",
	"/etc/netns", "/run/netns", "/run/containerd", "/run/tunnel",
}

// snapshotMachine fails rather than return a partial picture: an empty
// list recorded as "before" would hide every change made after it.
func snapshotMachine(ctx context.Context, p Paths) (machineState, error) {
	var errs []error
	lines := func(name string, args ...string) []string {
		out, err := run(ctx, name, args...)
		if err != nil {
			errs = append(errs, err)
		}
		return sortedLines(out)
	}
	var s machineState
	s.Links = lines("ip", "-o", "link", "show")
	for i, l := range s.Links { // keep "name: <flags>" and drop counters that drift
		f := strings.Fields(l)
		if len(f) >= 3 {
			s.Links[i] = f[1] + " " + f[2]
		}
	}
	s.Routes = lines("ip", "route", "show", "table", "all")
	s.Rules = lines("ip", "rule", "show")
	s.Netns = lines("ip", "netns", "list")
	for _, l := range lines("iptables-save") {
		if strings.HasPrefix(l, "-") || strings.HasPrefix(l, "*") {
			s.Iptables = append(s.Iptables, l)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 4 {
				s.Mounts = append(s.Mounts, f[4])
			}
		}
		sort.Strings(s.Mounts)
	}
	for _, path := range wellKnownPaths {
		if _, err := os.Stat(path); err == nil {
			s.Paths = append(s.Paths, path)
		}
	}
	s.Processes = labProcesses(p)
	for _, ctrl := range []string{"memory", "pids", "cpu,cpuacct", "unified"} {
		entries, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctrl))
		for _, e := range entries {
			if e.IsDir() {
				s.Cgroups = append(s.Cgroups, ctrl+"/"+e.Name())
			}
		}
	}
	return s, errors.Join(errs...)
}

// labProcesses lists processes that belong to the lab: started from its
// cache, or naming its state folder (containerd, its shims, CoreDNS).
func labProcesses(p Paths) []string {
	var procs []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' || pid == fmt.Sprint(os.Getpid()) {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil || len(cmdline) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")
		exe, _ := os.Readlink("/proc/" + pid + "/exe")
		if strings.HasPrefix(exe, p.Cache+"/") || strings.Contains(cmd, p.State+"/") {
			procs = append(procs, pid+" "+cmd)
		}
	}
	sort.Strings(procs)
	return procs
}

func sortedLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// diff lists what differs between two snapshots, one line per item.
func (s machineState) diff(after machineState) []string {
	var out []string
	cmp := func(what string, a, b []string) {
		in := func(xs []string) map[string]bool {
			m := map[string]bool{}
			for _, x := range xs {
				m[x] = true
			}
			return m
		}
		before, now := in(a), in(b)
		for _, x := range b {
			if !before[x] {
				out = append(out, fmt.Sprintf("%s added: %s", what, x))
			}
		}
		for _, x := range a {
			if !now[x] {
				out = append(out, fmt.Sprintf("%s removed: %s", what, x))
			}
		}
	}
	cmp("link", s.Links, after.Links)
	cmp("route", s.Routes, after.Routes)
	cmp("rule", s.Rules, after.Rules)
	cmp("netns", s.Netns, after.Netns)
	cmp("mount", s.Mounts, after.Mounts)
	cmp("iptables", s.Iptables, after.Iptables)
	cmp("path", s.Paths, after.Paths)
	cmp("process", s.Processes, after.Processes)
	cmp("cgroup", s.Cgroups, after.Cgroups)
	return out
}

func (p Paths) baselineFile() string { return p.state("machine-before.json") }

// recordBaseline saves the machine's state once, before the lab's first change.
func recordBaseline(ctx context.Context, p Paths) error {
	if _, err := os.Stat(p.baselineFile()); err == nil {
		return nil
	}
	s, err := snapshotMachine(ctx, p)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.baselineFile(), b, 0o644)
}

func loadBaseline(p Paths) (machineState, bool) {
	var s machineState
	b, err := os.ReadFile(p.baselineFile())
	if err != nil || json.Unmarshal(b, &s) != nil {
		return s, false
	}
	return s, true
}

// Processes lists the lab's processes that run now, for tests that check
// down left none.
func Processes(p Paths) []string { return labProcesses(p) }
