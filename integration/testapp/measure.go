package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// measure runs the benchmark clients `make bench` uses from a laptop:
//
//	latency URL N [H]  N sequential GETs, each on a new connection (with header H, NAME:VALUE);
//	                     prints p50 and p99 in µs
//	download URL       one GET; prints the bytes and the rate in bytes per second
//	upload URL N       one POST of N bytes; prints the bytes and the rate in bytes per second
//	conns ADDR N [HOLD] N TCP connections to an echo at once, each pinged, all held open
//	                     for HOLD (a duration) before they close; prints how many answered
//	dns cold|cached|refreshed N SUFFIX   N lookups through the system resolver: cold ones of
//	                     names never asked before (pod names 10-1-X-Y.SUFFIX), cached ones of
//	                     one name, refreshed ones of one name 700 ms apart (each finds its
//	                     cached answer old enough to be refreshed); prints p50 in µs
func measure(ctx context.Context, out io.Writer, verb string, args []string) error {
	switch verb {
	case "latency":
		if len(args) != 2 && len(args) != 3 {
			return errors.New("usage: latency URL N [NAME:VALUE]")
		}
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			return errors.New("N must be a positive number")
		}
		var header []string
		if len(args) == 3 {
			k, v, _ := strings.Cut(args[2], ":")
			header = []string{k, strings.TrimSpace(v)}
		}
		p50, p99, err := latency(ctx, args[0], n, header)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "p50_us=%d p99_us=%d\n", p50.Microseconds(), p99.Microseconds())
		return err
	case "download":
		if len(args) != 1 {
			return errors.New("usage: download URL")
		}
		start := time.Now()
		resp, err := http.Get(args[0])
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return err
		}
		secs := time.Since(start).Seconds()
		_, err = fmt.Fprintf(out, "bytes=%d bytes_per_sec=%.0f\n", n, float64(n)/secs)
		return err
	case "upload":
		if len(args) != 2 {
			return errors.New("usage: upload URL N")
		}
		n, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || n < 1 {
			return errors.New("N must be a positive number")
		}
		start := time.Now()
		resp, err := http.Post(args[0], "application/octet-stream", io.LimitReader(pattern{}, n))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("upload: HTTP %s", resp.Status)
		}
		secs := time.Since(start).Seconds()
		_, err = fmt.Fprintf(out, "bytes=%d bytes_per_sec=%.0f\n", n, float64(n)/secs)
		return err
	case "conns":
		if len(args) != 2 && len(args) != 3 {
			return errors.New("usage: conns ADDR N [HOLD]")
		}
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			return errors.New("N must be a positive number")
		}
		var hold time.Duration
		if len(args) == 3 {
			if hold, err = time.ParseDuration(args[2]); err != nil {
				return err
			}
		}
		ok := conns(ctx, args[0], n, hold)
		_, err = fmt.Fprintf(out, "ok=%d of=%d\n", ok, n)
		return err
	case "dns":
		if len(args) != 3 || (args[0] != "cold" && args[0] != "cached" && args[0] != "refreshed") {
			return errors.New("usage: dns cold|cached|refreshed N SUFFIX")
		}
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 || n > 60000 {
			return errors.New("N must be a number from 1 to 60000")
		}
		p50, err := dnsLatency(ctx, args[0], n, args[2])
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "p50_us=%d\n", p50.Microseconds())
		return err
	}
	return errors.New("unknown verb " + verb)
}

// dnsLatency times lookups through the system's resolver configuration,
// as any program on the laptop would resolve.
func dnsLatency(ctx context.Context, mode string, n int, suffix string) (time.Duration, error) {
	r := &net.Resolver{PreferGo: true}
	name := func(i int) string {
		if mode == "cold" {
			return fmt.Sprintf("10-1-%d-%d.%s", i/250, i%250+1, suffix)
		}
		return suffix
	}
	if mode != "cold" { // fill the cache first
		if _, err := r.LookupHost(ctx, name(0)); err != nil {
			return 0, err
		}
	}
	ds := make([]time.Duration, 0, n)
	for i := range n {
		if mode == "refreshed" {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(700 * time.Millisecond):
			}
		}
		start := time.Now()
		if _, err := r.LookupHost(ctx, name(i)); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}

func latency(ctx context.Context, url string, n int, header []string) (p50, p99 time.Duration, err error) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	ds := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if len(header) == 2 {
			req.Header.Set(header[0], header[1])
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)*50/100], ds[min(len(ds)-1, len(ds)*99/100)], nil
}

// conns holds all n connections open at once before it pings them, so the
// tunnel carries n live flows together.
func conns(ctx context.Context, addr string, n int, hold time.Duration) int {
	var d net.Dialer
	cs := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				cs[i] = c
			}
		}()
	}
	wg.Wait()
	var mu sync.Mutex
	ok := 0
	for _, c := range cs {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(20*time.Second + hold))
			buf := make([]byte, 4)
			if _, err := c.Write([]byte("ping")); err != nil {
				return
			}
			if _, err := io.ReadFull(c, buf); err == nil && string(buf) == "ping" {
				mu.Lock()
				ok++
				mu.Unlock()
			}
			time.Sleep(hold)
		}()
	}
	wg.Wait()
	return ok
}

// pattern is an endless stream of letters, cheap to produce.
type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a' + byte(i%26)
	}
	return len(p), nil
}
