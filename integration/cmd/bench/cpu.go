//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// cpuTimes is the CPU time each kind of process has used so far, by a
// name that tells the hops apart (the manager from a sidecar, containerd
// from its shims).
func cpuTimes() map[string]time.Duration {
	tick := 100.0 // USER_HZ on Linux
	out := map[string]time.Duration{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(data)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(s[end+2:])
		if len(f) < 13 {
			continue
		}
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cmdline"))
		name := processName(strings.Split(string(cmdline), "\x00"))
		if name == "" {
			continue
		}
		out[name] += time.Duration((utime + stime) / tick * float64(time.Second))
	}
	return out
}

func processName(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	base := filepath.Base(argv[0])
	switch {
	case base == "tunnel-agent" && len(argv) > 1:
		return "tunnel-agent " + argv[1]
	case base == "tunnel" && len(argv) > 1 && argv[1] == "daemon":
		return "tunnel daemon"
	case base == "kubectl" && len(argv) > 1:
		return "kubectl " + argv[1]
	case strings.HasPrefix(base, "containerd-shim"):
		return "containerd-shim"
	}
	switch base {
	case "kubelet", "kube-apiserver", "containerd", "kube-proxy", "echo", "traefik", "etcd":
		return base
	}
	return ""
}

// printCPU writes what each process spent between two cpuTimes, most first.
func printCPU(w io.Writer, what string, before, after map[string]time.Duration) {
	type row struct {
		name string
		d    time.Duration
	}
	var rows []row
	var total time.Duration
	for name, d := range after {
		if d -= before[name]; d >= 10*time.Millisecond {
			rows = append(rows, row{name, d})
			total += d
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].d > rows[j].d })
	fmt.Fprintf(w, "CPU for %s: %s in all", what, total.Round(10*time.Millisecond))
	for _, r := range rows {
		fmt.Fprintf(w, "; %s %s", r.name, r.d.Round(10*time.Millisecond))
	}
	fmt.Fprintln(w)
}

// startPerf records a system-wide profile with call graphs into file until
// the returned stop runs; nothing when file is "". For finding where a
// path's CPU goes: perf report -i FILE --sort comm,dso,sym.
func startPerf(file string) (stop func(), err error) {
	if file == "" {
		return func() {}, nil
	}
	cmd := exec.Command("perf", "record", "-a", "-g", "-o", file)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start perf: %w", err)
	}
	time.Sleep(500 * time.Millisecond) // perf is recording by now
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}, nil
}
