//go:build e2e && soak

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/integration/lab"
)

// TestSoak holds one laptop connected for SOAK (default 30m) with steady
// traffic both ways and two intercepts, and makes it reconnect every few
// minutes (a cut, then a new address, in turn). Every minute it reads the
// goroutines, open fds and live heap (as the last garbage collection
// measured it) of the daemon, the manager and a sidecar from their own
// metrics, and their resident memory from /proc in two parts: anonymous
// and file-backed (the binary's pages, which grow as code paths run for
// the first time). It fails when goroutines, fds or the live heap grew by
// more than 10% from minute five (when caches and pools have filled) to
// the end: what a leak grows. RSS is printed beside them but not judged:
// it moves with when the collector last ran (up to twice the live heap)
// and with how much of a preallocated buffer (WireGuard's, 64 KiB a
// packet) has been touched yet. Run by `make soak`, not by `make test`.
func TestSoak(t *testing.T) {
	total := 30 * time.Minute
	if s := os.Getenv("SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 7*time.Minute {
			t.Fatalf("SOAK=%q: want a duration of at least 7m", s)
		}
		total = d
	}
	const every = 4 * time.Minute // a reconnect fault
	c := newChaosLab(t, "soak")
	ls := c.loads()
	ctx := context.Background()
	pods, err := h.Client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=api"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("the api pods: %v", err)
	}
	sidecar := pods.Items[0].Status.PodIP
	mgrPods, err := h.Client.CoreV1().Pods("tunnel-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tunnel-manager"})
	if err != nil || len(mgrPods.Items) == 0 {
		t.Fatalf("the manager's pod: %v", err)
	}
	agent := func(role string) func(argv []string) bool {
		return func(argv []string) bool {
			return len(argv) > 1 && filepath.Base(argv[0]) == "tunnel-agent" && argv[1] == role
		}
	}
	pids := map[string]func() ([]int, error){
		"daemon": func() ([]int, error) {
			return h.Lab.LaptopProcesses(ctx, "soak", func(argv []string) bool {
				return len(argv) > 1 && strings.HasPrefix(filepath.Base(argv[0]), "tunnel") && argv[1] == "daemon"
			})
		},
		"manager": func() ([]int, error) { return h.Lab.PodProcesses(ctx, mgrPods.Items[0].Status.PodIP, agent("manager")) },
		"sidecar": func() ([]int, error) { return h.Lab.PodProcesses(ctx, sidecar, agent("sidecar")) },
	}

	var minutes []reading
	start := time.Now()
	nextFault, faults := start.Add(every), 0
	for i := 0; time.Since(start) < total; i++ {
		r := reading{}
		for who, get := range map[string]func() (string, error){
			"daemon":  func() (string, error) { return c.l.sh("curl -sf --max-time 5 http://127.0.0.1:9095/metrics") },
			"manager": func() (string, error) { return managerMetrics(ctx) },
			"sidecar": func() (string, error) {
				return h.Run(ctx, node, "curl", "-sf", "--max-time", "5", fmt.Sprintf("http://%s:%d/metrics", sidecar, inject.MetricsPort))
			},
		} {
			out, err := get()
			if err != nil {
				t.Fatalf("minute %d: the %s's metrics: %v\n%s", i, who, err, out)
			}
			for _, m := range []string{"go_goroutines", "process_open_fds", "go_gc_heap_live_bytes", "process_resident_memory_bytes"} {
				r[who+" "+m] = metricValue(out, m)
			}
			ps, err := pids[who]()
			if err != nil || len(ps) != 1 {
				t.Fatalf("minute %d: the %s's process: %v %v", i, who, ps, err)
			}
			anon, file, err := residentMemory(ps[0])
			if err != nil {
				t.Fatalf("minute %d: the %s's memory: %v", i, who, err)
			}
			r[who+" rss_anon_bytes"], r[who+" rss_file_bytes"] = anon, file
		}
		minutes = append(minutes, r)
		t.Logf("SOAK minute %d: %s", i, formatReading(r))
		if time.Now().After(nextFault) {
			kind := []string{"partition", "readdress"}[faults%2]
			if err := h.Lab.Fault(ctx, kind, lab.FaultOptions{Laptop: "soak", For: 10 * time.Second}); err != nil {
				t.Fatalf("fault %s: %v", kind, err)
			}
			end := time.Now()
			time.Sleep(recoveryBound + 5*time.Second)
			for _, ld := range ls {
				d, failed, ok := recovery(ld.samples(), end)
				if !ok || d > recoveryBound {
					t.Errorf("fault %d (%s): %s came back after %s (%v), %d failed after it", faults, kind, ld.name, d, ok, failed)
				}
				t.Logf("SOAK fault %d (%s): %s back after %s", faults, kind, ld.name, d.Round(100*time.Millisecond))
			}
			faults++
			nextFault = time.Now().Add(every)
		}
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Minute)))
	}
	if _, err := h.Lab.MoveLaptop(ctx, "soak", false); err != nil {
		t.Errorf("move the laptop back home: %v", err)
	}
	for _, ld := range ls {
		ld.stop()
		s := ld.samples()
		failed := 0
		for _, x := range s {
			if !x.ok {
				failed++
			}
		}
		t.Logf("SOAK %s: %d requests, %d failed (during the %d faults)", ld.name, len(s), failed, faults)
		if len(s) < 10 || slices.ContainsFunc(s[len(s)-10:], func(x sample) bool { return !x.ok }) {
			t.Errorf("%s: the last requests of the soak failed", ld.name)
		}
	}
	base, end := minutes[5], minutes[len(minutes)-1]
	var keys []string
	for k := range base {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if base[k] <= 0 || end[k] <= 0 {
			t.Errorf("%s: no figure (minute 5: %v, end: %v)", k, base[k], end[k])
			continue
		}
		grew := (end[k] - base[k]) / base[k]
		t.Logf("SOAK %-45s minute 5: %12.0f  end: %12.0f  (%+.1f%%)", k, base[k], end[k], 100*grew)
		judged := strings.HasSuffix(k, "go_goroutines") || strings.HasSuffix(k, "process_open_fds") || strings.HasSuffix(k, "go_gc_heap_live_bytes")
		if grew > 0.10 && judged {
			t.Errorf("%s grew by %.1f%% from minute 5 to the end of the soak", k, 100*grew)
		}
	}
}

// reading is one minute's figures: "daemon go_goroutines" → value.
type reading map[string]float64

func formatReading(r reading) string {
	var parts []string
	for _, who := range []string{"daemon", "manager", "sidecar"} {
		parts = append(parts, fmt.Sprintf("%s %.0f goroutines %.0f fds live heap %.1f MB, RSS %.1f MB (anon %.1f, file %.1f)", who,
			r[who+" go_goroutines"], r[who+" process_open_fds"], r[who+" go_gc_heap_live_bytes"]/1e6,
			r[who+" process_resident_memory_bytes"]/1e6, r[who+" rss_anon_bytes"]/1e6, r[who+" rss_file_bytes"]/1e6))
	}
	return strings.Join(parts, "; ")
}

// residentMemory reads a process's resident memory from /proc, anonymous
// and file-backed, in bytes.
func residentMemory(pid int) (anon, file float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "RssAnon:":
			anon = v * 1024
		case "RssFile:":
			file = v * 1024
		}
	}
	if anon == 0 {
		return 0, 0, fmt.Errorf("no RssAnon in /proc/%d/status", pid)
	}
	return anon, file, nil
}
