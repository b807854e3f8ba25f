//go:build linux

package lab

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// progress tells a person what the lab is doing: one line per step, and a
// reminder now and then while a long step (a cold build) runs.
type progress struct {
	mu  sync.Mutex // guards w
	w   io.Writer
	now func() time.Time
}

func newProgress(w io.Writer) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, now: time.Now}
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// step announces a step and returns the func that reports how it ended.
func (p *progress) step(what string) func(error) {
	start := p.now()
	p.printf("==> %s\n", what)
	return func(err error) {
		if err != nil {
			p.printf("    failed after %s\n", p.since(start))
			return
		}
		if d := p.now().Sub(start); d > 2*time.Second {
			p.printf("    done in %s\n", p.since(start))
		}
	}
}

// long is step for work that may take minutes: it prints how long it has
// been running every 30 s until the returned func is called.
func (p *progress) long(ctx context.Context, what string) func(error) {
	done := p.step(what)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	start := p.now()
	go func() {
		defer wg.Done()
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.printf("    still working (%s)\n", p.since(start))
			case <-stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func(err error) {
		close(stop)
		wg.Wait()
		done(err)
	}
}

func (p *progress) since(t time.Time) time.Duration {
	return p.now().Sub(t).Round(100 * time.Millisecond)
}
