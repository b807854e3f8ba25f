package main

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// faults makes the app misbehave on request, for canary tests: a share of
// answers are 500 (FAIL_RATE in the environment, or the query parameter
// fail, from 0 to 1) and every answer comes late (DELAY, or the query
// parameter delay, a duration). /healthz is spared, so a faulty version
// still becomes ready, as a bad release does.
type faults struct {
	failRate float64
	delay    time.Duration
	next     http.Handler
	n        atomic.Uint64 // requests seen, so the failing share is exact
}

// withFaults wraps next with the faults getenv describes.
func withFaults(next http.Handler, getenv func(string) string) (http.Handler, error) {
	f := &faults{next: next}
	var err error
	if v := getenv("FAIL_RATE"); v != "" {
		if f.failRate, err = parseRate(v); err != nil {
			return nil, fmt.Errorf("FAIL_RATE: %w", err)
		}
	}
	if v := getenv("DELAY"); v != "" {
		if f.delay, err = time.ParseDuration(v); err != nil || f.delay < 0 {
			return nil, fmt.Errorf("DELAY %q: want a duration such as 50ms", v)
		}
	}
	return f, nil
}

func parseRate(v string) (float64, error) {
	r, err := strconv.ParseFloat(v, 64)
	if err != nil || r < 0 || r > 1 {
		return 0, fmt.Errorf("%q: want a share from 0 to 1", v)
	}
	return r, nil
}

func (f *faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		f.next.ServeHTTP(w, r)
		return
	}
	rate, delay := f.failRate, f.delay
	q := r.URL.Query()
	if v := q.Get("fail"); v != "" {
		if x, err := parseRate(v); err == nil {
			rate = x
		}
	}
	if v := q.Get("delay"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			delay = d
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	// The n-th request fails when the running count of failures due, n
	// times the rate, passes a whole number: exactly that share of them.
	n := f.n.Add(1)
	if rate > 0 && uint64(float64(n)*rate) > uint64(float64(n-1)*rate) {
		http.Error(w, "failing on purpose (FAIL_RATE)", http.StatusInternalServerError)
		return
	}
	f.next.ServeHTTP(w, r)
}
