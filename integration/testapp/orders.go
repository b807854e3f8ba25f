package main

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// orders is the test app's business metric: every request it answers is
// an order, counted in orders_total{result="ok"|"failed"}, which the
// metrics handler serves.
// ORDER_FAIL_RATE fails that share of orders while the answer stays a 200:
// a release that breaks the business and not HTTP, which only a canary's
// own check (tunnel canary --check) catches.
type orders struct {
	failRate float64
	n        atomic.Uint64
	total    *prometheus.CounterVec
	next     http.Handler
}

// withOrders counts next's requests as orders; metrics serves the counts.
func withOrders(next http.Handler, getenv func(string) string) (h, metrics http.Handler, err error) {
	o := &orders{next: next}
	if v := getenv("ORDER_FAIL_RATE"); v != "" {
		if o.failRate, err = parseRate(v); err != nil {
			return nil, nil, fmt.Errorf("ORDER_FAIL_RATE: %w", err)
		}
	}
	reg := prometheus.NewRegistry()
	o.total = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "orders_total", Help: "Orders taken, by result."}, []string{"result"})
	reg.MustRegister(o.total)
	o.total.WithLabelValues("ok").Add(0)
	o.total.WithLabelValues("failed").Add(0)
	return o, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

func (o *orders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		o.next.ServeHTTP(w, r)
		return
	}
	// Exactly the share ORDER_FAIL_RATE says, as FAIL_RATE does.
	n := o.n.Add(1)
	result := "ok"
	if o.failRate > 0 && uint64(float64(n)*o.failRate) > uint64(float64(n-1)*o.failRate) {
		result = "failed"
	}
	o.total.WithLabelValues(result).Inc()
	w.Header().Set("X-Order", result)
	o.next.ServeHTTP(w, r)
}
