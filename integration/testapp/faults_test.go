package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestFaultsFailAnExactShare(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	h, err := withFaults(ok, env{"FAIL_RATE": "0.2"}.get)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for range 100 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code == http.StatusInternalServerError {
			failed++
		}
	}
	if failed != 20 {
		t.Errorf("%d of 100 failed, want 20", failed)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz failed: %d", rec.Code)
	}
	// A query parameter overrides the environment, per request.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/?fail=1", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("?fail=1 answered %d", rec.Code)
	}
}

func TestFaultsDelay(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	h, err := withFaults(ok, env{"DELAY": "30ms"}.get)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("answered after %s, want at least 30ms", d)
	}
	start = time.Now()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/?delay=0s", nil))
	if d := time.Since(start); d > 25*time.Millisecond {
		t.Errorf("?delay=0s still took %s", d)
	}
}

func TestFaultsRefuseNonsense(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	for _, env := range []env{{"FAIL_RATE": "1.5"}, {"FAIL_RATE": "x"}, {"DELAY": "soon"}, {"DELAY": "-1s"}} {
		if _, err := withFaults(ok, env.get); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
}

type env map[string]string

func (e env) get(k string) string { return e[k] }
