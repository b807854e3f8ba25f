package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"tunnel.dev/tunnel/internal/gometrics"
)

// metrics are the sidecar's Prometheus series, per intercept.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec // by intercept and result
	bytes     *prometheus.CounterVec // by intercept and direction
	fallbacks *prometheus.CounterVec // by intercept
	// laptopConns counts connections to laptops by intercept and path.
	laptopConns *prometheus.CounterVec
}

func newMetrics() *metrics {
	const ns = "tunnel_sidecar"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "intercepted_requests_total",
			Help: "Requests (HTTP) or connections (other protocols) an intercept took, by result: laptop, failed, mirrored, mirror_failed.",
		}, []string{"intercept", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "intercepted_bytes_total",
			Help: "Bytes of whole intercepted connections, by direction.",
		}, []string{"intercept", "direction"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "fallbacks_total",
			Help: "Requests an intercept should have taken that went to the app because its laptop could not answer.",
		}, []string{"intercept"}),
		laptopConns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "laptop_connections_total",
			Help: "Connections opened to laptops, by path: direct (a spare the laptop port-forwarded to this pod) or manager.",
		}, []string{"intercept", "path"}),
	}
	m.reg.MustRegister(gometrics.Collector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.bytes, m.fallbacks, m.laptopConns)
	return m
}
