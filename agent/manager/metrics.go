package manager

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"tunnel.dev/tunnel/internal/gometrics"
)

// metrics are the manager's Prometheus series, on a registry of its own so
// that two Managers (or tests) never collide on the global one.
type metrics struct {
	reg *prometheus.Registry

	sessionsActive prometheus.Gauge
	sessionsTotal  prometheus.Counter
	streams        *prometheus.CounterVec // by kind: control, tcp, udp, bad
	bytes          *prometheus.CounterVec // by kind and direction
	dialErrors     *prometheus.CounterVec // by kind and status
	dnsQueries     *prometheus.CounterVec // by result
	dnsLatency     prometheus.Histogram
	udpFlowsActive prometheus.Gauge
	refused        *prometheus.CounterVec // by session kind and reason
	intercepted    *prometheus.CounterVec // by path: wireguard, session
}

// Directions of the bytes counter, seen from the laptop.
const (
	toCluster = "to_cluster"
	toLaptop  = "to_laptop"
)

func newMetrics() *metrics {
	const ns = "tunnel_manager"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sessions_active",
			Help: "Laptop sessions connected now.",
		}),
		sessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "sessions_total",
			Help: "Laptop sessions accepted.",
		}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "streams_total",
			Help: "Streams opened by laptops, by kind (bad: unreadable header).",
		}, []string{"kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "bytes_total",
			Help: "Payload bytes relayed, by kind and direction.",
		}, []string{"kind", "direction"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "dial_errors_total",
			Help: "Streams answered with a status other than OK, by kind and status.",
		}, []string{"kind", "status"}),
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "dns_queries_total",
			Help: "DNS queries forwarded for laptops, by result.",
		}, []string{"result"}),
		dnsLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "dns_query_duration_seconds",
			Help:    "Time to answer a forwarded DNS query.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}),
		udpFlowsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "udp_flows_active",
			Help: "UDP flows relayed now.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "refused_total",
			Help: "Calls and streams refused, by session kind (laptop, pod) and reason (method, rate, reach, limit, rights).",
		}, []string{"session", "reason"}),
		intercepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "intercept_streams_total",
			Help: "Intercepted connections carried to laptops, by path (wireguard, session: the port-forward).",
		}, []string{"path"}),
	}
	m.reg.MustRegister(
		gometrics.Collector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.sessionsActive, m.sessionsTotal, m.streams, m.bytes, m.dialErrors,
		m.dnsQueries, m.dnsLatency, m.udpFlowsActive, m.refused, m.intercepted,
	)
	return m
}
