//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

// laptopsResult is one row of the many-laptops table.
type laptopsResult struct {
	n               int
	rssPerSession   float64 // manager RSS per session, bytes
	cpuPerSession   float64 // manager CPU per session under load, cores
	p50Median       float64 // microseconds: the laptops' p50s, their median
	p50Worst        float64 // and the worst
	apiServerCPU    float64 // cores, under the load
	kubeletCPU      float64
	managerCPUTotal float64
}

// manyLaptops connects n laptops (a network namespace each) to the one
// manager, then runs a request loop on every one at once: requests to the
// echo Service by name, a new connection each. It reports the manager's
// RSS per session (its growth from none of these connected) and CPU per
// session under the load, and each laptop's p50.
func (b *bench) manyLaptops(ctx context.Context, n, requests int) (laptopsResult, error) {
	r := laptopsResult{n: n}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("many%d", i)
	}
	// each runs f for every laptop, at most limit at once.
	each := func(limit int, f func(name string) error) error {
		var wg sync.WaitGroup
		errs := make([]error, n)
		sem := make(chan struct{}, limit)
		for i, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = f(name)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}
	all := func(f func(name string) error) error { return each(10, f) } // a team's morning, not a stampede
	quit := func(name string) error {
		_, err := b.l.Run(context.WithoutCancel(ctx), lab.ExecOptions{Laptop: name}, b.tunnel, "quit")
		return err
	}
	// The lab hands out laptops' addresses one process at a time: make
	// them in turn, then use them at once.
	for _, name := range names {
		if _, err := b.sh(ctx, lab.ExecOptions{Laptop: name}, "true"); err != nil {
			return r, err
		}
	}
	_ = all(quit)
	defer all(quit)
	rss0, err := managerRSS()
	if err != nil {
		return r, err
	}
	if err := all(func(name string) error {
		_, err := b.sh(ctx, lab.ExecOptions{Laptop: name}, fmt.Sprintf("%s connect -n %s >/dev/null", b.tunnel, b.ns))
		return err
	}); err != nil {
		return r, err
	}
	time.Sleep(2 * time.Second) // sessions settled: watches sent, caches warm
	rss1, err := managerRSS()
	if err != nil {
		return r, err
	}
	r.rssPerSession = float64(rss1-rss0) / float64(n)

	before, start := cpuTimes(), time.Now()
	var mu sync.Mutex
	var p50s []float64
	err = each(n, func(name string) error { // the loops all run at once
		out, err := b.sh(ctx, lab.ExecOptions{Laptop: name}, fmt.Sprintf("%s latency http://echo.%s/ %d", b.echo, b.ns, requests))
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		p50s = append(p50s, figures(out)["p50_us"])
		return nil
	})
	wall := time.Since(start).Seconds()
	after := cpuTimes()
	if err != nil {
		return r, err
	}
	printCPU(os.Stderr, fmt.Sprintf("%d laptops' requests", n), before, after)
	cores := func(name string) float64 { return (after[name] - before[name]).Seconds() / wall }
	r.managerCPUTotal = cores("tunnel-agent manager")
	r.cpuPerSession = r.managerCPUTotal / float64(n)
	r.apiServerCPU, r.kubeletCPU = cores("kube-apiserver"), cores("kubelet")
	slices.Sort(p50s)
	r.p50Median, r.p50Worst = median(p50s), p50s[len(p50s)-1]
	return r, nil
}

// managerRSS is the manager process's resident memory, in bytes.
func managerRSS() (int64, error) {
	stats, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil || processName(strings.Split(string(b), "\x00")) != "tunnel-agent manager" {
			continue
		}
		st, err := os.ReadFile(filepath.Join(filepath.Dir(path), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no tunnel manager runs on this machine")
}

func printLaptops(rows []laptopsResult, requests int) {
	t := [][]string{{"laptops on one manager", "manager RSS per session", "manager CPU per session", "p50 per laptop, median / worst",
		fmt.Sprintf("CPU under the load (%d requests each): manager / API server / kubelet", requests)}}
	for _, r := range rows {
		t = append(t, []string{strconv.Itoa(r.n), fmt.Sprintf("%.2f MB", r.rssPerSession/1e6),
			fmt.Sprintf("%.1f ms/s", r.cpuPerSession*1000),
			fmt.Sprintf("%.2f ms / %.2f ms", r.p50Median/1000, r.p50Worst/1000),
			fmt.Sprintf("%.2f / %.2f / %.2f cores", r.managerCPUTotal, r.apiServerCPU, r.kubeletCPU)})
	}
	printTable(t)
}
