package canarydriver

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tunnel.dev/tunnel/canary"
)

// collector reads the canary's record and lease for a scrape, and keeps
// what it read for a second, so that however often it is scraped it asks
// the API server no more than the driver does.
type collector struct {
	store   canary.Store
	leases  canary.Leases
	service string
	labels  prometheus.Labels
	now     func() time.Time

	mu   sync.Mutex
	last reading

	weight, match, step, phase, cluster, value, bound, passed *prometheus.Desc
}

func newCollector(store canary.Store, leases canary.Leases, service string) *collector {
	// backend is the stable Service as the gateway's metrics name it
	// (NAMESPACE-SERVICE), which the canary dashboard selects by.
	labels := prometheus.Labels{"canary": service, "backend": store.Namespace + "-" + service}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("tunnel_canary_"+name, help, variable, labels)
	}
	return &collector{store: store, leases: leases, service: service, labels: labels, now: time.Now,
		weight:  desc("weight", "The canary's share of the Service's traffic, in percent (0 outside its steps)."),
		match:   desc("match", "1 while requests that match the dark launch go to the canary."),
		step:    desc("step", "The canary's step, from 1; 0 outside its steps."),
		phase:   desc("phase", "1 for the canary's phase.", "phase"),
		cluster: desc("driven_by_cluster", "1 while the standby in the cluster drives the canary, 0 while a CLI does or nobody."),
		value:   desc("check_value", "The last value of each of the canary's own checks (--check).", "check"),
		bound:   desc("check_bound", "The bound each check's value was held to.", "check"),
		passed:  desc("check_passed", "1 when the check held at its last analysis.", "check"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.weight, c.match, c.step, c.phase, c.cluster, c.value, c.bound, c.passed} {
		ch <- d
	}
}

// reading is one read of the record and the lease.
type reading struct {
	at     time.Time
	st     *canary.State
	holder *canary.Driver
	err    error
}

const readEvery = time.Second

func (c *collector) read() reading {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); c.last.at.IsZero() || now.Sub(c.last.at) >= readEvery {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r := reading{at: now}
		r.st, r.err = c.store.Get(ctx, c.service)
		if r.err == nil {
			r.holder, r.err = c.leases.Holder(ctx, c.service)
		}
		c.last = r
	}
	return c.last
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	r := c.read()
	if r.err != nil { // the scrape fails, rather than reading as "no canary"
		ch <- prometheus.NewInvalidMetric(c.phase, r.err)
		return
	}
	st := r.st
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	split := st.Split()
	gauge(c.weight, float64(split.Weight))
	gauge(c.match, one(split.Match != nil))
	step := 0
	if st.Phase == canary.Progressing {
		step = st.Step + 1
	}
	gauge(c.step, float64(step))
	gauge(c.phase, 1, string(st.Phase))
	host, _ := os.Hostname()
	gauge(c.cluster, one(r.holder.Holds(c.now(), host) && r.holder.Cluster))
	if n := len(st.Checks); n > 0 {
		seen := map[string]bool{} // the record may be edited to name a check twice
		for _, v := range st.Checks[n-1].Custom {
			if v.NoData || v.Problem != "" || seen[v.Name] {
				continue
			}
			seen[v.Name] = true
			gauge(c.value, v.Value, v.Name)
			gauge(c.bound, v.Bound, v.Name)
			gauge(c.passed, one(v.Passed), v.Name)
		}
	}
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler answers GET /metrics. Every scrape reads the record and
// the lease from the API server, and the port is open to the cluster as
// the manager's is, so scrapes in flight are bounded: beyond two, a
// scraper gets 503 at once instead of queueing reads.
func metricsHandler(c *collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: 2, Timeout: 10 * time.Second}))
	return mux
}

// serveMetrics serves the canary's state on canary.StandbyMetricsPort until ctx ends.
func serveMetrics(ctx context.Context, c *collector) {
	srv := &http.Server{Addr: fmt.Sprintf(":%d", canary.StandbyMetricsPort), Handler: metricsHandler(c),
		ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 15 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	_ = srv.ListenAndServe()
}
