package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A release that fails orders still answers 200, and its counter says so.
func TestOrdersFailAnExactShareAndAnswer200(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	h, metrics, err := withOrders(ok, env{"ORDER_FAIL_RATE": "0.3"}.get)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("an order answered %d", rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	rec = httptest.NewRecorder()
	metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`orders_total{result="failed"} 30`, `orders_total{result="ok"} 70`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, body)
		}
	}
	if _, _, err := withOrders(ok, env{"ORDER_FAIL_RATE": "2"}.get); err == nil {
		t.Error("ORDER_FAIL_RATE=2 accepted")
	}
}
