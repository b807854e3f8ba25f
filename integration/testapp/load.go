package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var podField = regexp.MustCompile(`pod=(\S+)`)

// load sends rate requests a second to url (with Host host) until it is
// told to stop, and writes one line per answer: "UNIX_MS CODE POD", where
// POD is the answering pod's name ("-" when the body names none, "error"
// when there was no answer). The canary tests count these by step; each
// HEADER argument ("Name: value") goes with every request, so a test can
// send a dark launch's cohort.
func load(ctx context.Context, out io.Writer, args []string) error {
	if len(args) < 3 {
		return errors.New("usage: load URL RATE HOST [HEADER: VALUE]...")
	}
	header := http.Header{}
	for _, h := range args[3:] {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("header %q: want Name: value", h)
		}
		header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	rate, err := strconv.Atoi(args[1])
	if err != nil || rate < 1 {
		return errors.New("RATE must be a positive number of requests a second")
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	w := bufio.NewWriter(out)
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, 64)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return w.Flush()
		case <-tick.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			continue // the far end is slower than the rate: skip a beat
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			code, pod := "0", "error"
			req, _ := http.NewRequest(http.MethodGet, args[0], nil)
			req.Host = args[2]
			req.Header = header.Clone()
			if resp, err := client.Do(req); err == nil {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				code, pod = strconv.Itoa(resp.StatusCode), "-"
				if m := podField.FindSubmatch(body); m != nil {
					pod = string(m[1])
				}
			}
			mu.Lock()
			fmt.Fprintf(w, "%d %s %s\n", time.Now().UnixMilli(), code, pod)
			mu.Unlock()
		}()
	}
}
