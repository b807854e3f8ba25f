package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tunnel.dev/tunnel/dns"
	"tunnel.dev/tunnel/internal/gometrics"
	"tunnel.dev/tunnel/tun/netstack"
	"tunnel.dev/tunnel/wgpath"
)

// The daemon's metrics read, when scraped, the counters the connection
// keeps anyway: the stack's, the resolver's and the session's. Nothing is
// counted twice on the packet path. Those counters belong to one
// connection, so every counter starts again from 0 at each connect, and
// reads 0 while the daemon is disconnected (connected is 0 then); to
// Prometheus that is a counter reset, which rate() and increase() handle.

// metricsSnapshot is what one scrape reads from the daemon.
type metricsSnapshot struct {
	connected  bool           // a connection exists, as `tunnel status` says
	sessionUp  bool           // and its session to the manager is live
	traffic    netstack.Stats // both paths'
	wg         wgpath.Stats   // the WireGuard path's share
	wgUp       bool           // new connections take WireGuard
	dns        dns.ResolverStats
	reconnects uint64
}

// metricsSnapshot reads the current connection without d.mu, which Connect
// holds for as long as it dials (up to a minute, longer than a scrape
// waits).
func (d *Daemon) metricsSnapshot() metricsSnapshot {
	c := d.live.Load()
	if c == nil {
		return metricsSnapshot{}
	}
	return c.metricsSnapshot()
}

// metricsSnapshot reads the connection's counters; parts it lacks read 0.
// Every counter is atomic, so a connection being closed reads fine.
func (c *connection) metricsSnapshot() metricsSnapshot {
	s := metricsSnapshot{connected: true}
	if c.sess != nil {
		c.sess.mu.Lock()
		s.sessionUp = c.sess.state == "connected"
		c.sess.mu.Unlock()
		s.reconnects = c.sess.reconnects.Load()
	}
	if c.stack != nil && c.split != nil {
		s.traffic, s.wg = c.traffic(), c.split.Stats()
	}
	if c.wgPath != nil {
		s.wgUp = c.wgPath.status().Carrier == "wireguard"
	}
	if c.resolver != nil {
		s.dns = c.resolver.Stats()
	}
	return s
}

// Directions of the bytes counter, as the manager names them.
const (
	toCluster = "to_cluster"
	toLaptop  = "to_laptop"
)

// collector turns one snapshot per scrape into the daemon's series.
type collector struct {
	read func() metricsSnapshot

	connected, sessionUp, reconnects    *prometheus.Desc
	flowsActive, flowsTotal, bytes      *prometheus.Desc // by proto; by direction
	dialErrors, droppedDials            *prometheus.Desc
	dialsRefused                        *prometheus.Desc
	dnsQueries, dnsFailures, dnsLookups *prometheus.Desc // lookups by via
	wgUp, wgFlows                       *prometheus.Desc // flows by proto
}

func newCollector(read func() metricsSnapshot) *collector {
	const ns = "tunnel_daemon"
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
	}
	return &collector{
		read: read,
		connected: desc("connected",
			"1 while the daemon is connected to a cluster (its session may be reconnecting), 0 otherwise."),
		sessionUp: desc("session_up",
			"1 while the session to the cluster's manager is live, 0 while it reconnects or when disconnected."),
		reconnects: desc("session_reconnects_total",
			"Times the session to the manager dropped and the daemon began to reconnect, since connect."),
		flowsActive: desc("flows_active",
			"Flows forwarded into the cluster now, by protocol.", "proto"),
		flowsTotal: desc("flows_total",
			"Flows forwarded into the cluster (dial succeeded), by protocol, since connect.", "proto"),
		bytes: desc("bytes_total",
			"Payload bytes forwarded, by direction, since connect.", "direction"),
		dialErrors: desc("dial_errors_total",
			"Flows whose dial through the tunnel failed, since connect."),
		dialsRefused: desc("dials_refused_total",
			"Of the failed dials, those the manager refused: beyond what the user may reach, since connect."),
		droppedDials: desc("dropped_dials_total",
			"New flows dropped because too many dials were in flight, since connect."),
		dnsQueries: desc("dns_queries_total",
			"DNS queries the laptop's resolver answered, failures included, since connect."),
		dnsFailures: desc("dns_failures_total",
			"DNS queries the resolver answered with SERVFAIL, since connect."),
		dnsLookups: desc("dns_lookups_total",
			"Lookups made to answer DNS queries (one per name tried), by where the answer came from: cluster, upstream, cache, or stale (a cluster answer past its time, given while the cluster could not answer), since connect.", "via"),
		wgUp: desc("wireguard_up",
			"1 while new connections take the WireGuard path (UDP to the manager), 0 while they take the port-forward."),
		wgFlows: desc("wireguard_flows_total",
			"Of flows_total, those the WireGuard path carried, by protocol, since connect.", "proto"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.connected, c.sessionUp, c.reconnects, c.flowsActive, c.flowsTotal, c.bytes,
		c.dialErrors, c.dialsRefused, c.droppedDials, c.dnsQueries, c.dnsFailures, c.dnsLookups,
		c.wgUp, c.wgFlows,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.connected, boolFloat(s.connected))
	gauge(c.sessionUp, boolFloat(s.sessionUp))
	counter(c.reconnects, s.reconnects)

	t := s.traffic
	gauge(c.flowsActive, float64(t.TCPActive), "tcp")
	gauge(c.flowsActive, float64(t.UDPActive), "udp")
	counter(c.flowsTotal, t.TCPTotal, "tcp")
	counter(c.flowsTotal, t.UDPTotal, "udp")
	counter(c.bytes, t.BytesSent, toCluster)
	counter(c.bytes, t.BytesReceived, toLaptop)
	counter(c.dialErrors, t.DialErrors)
	counter(c.dialsRefused, t.DialsRefused)
	counter(c.droppedDials, t.DroppedDials)

	gauge(c.wgUp, boolFloat(s.wgUp))
	counter(c.wgFlows, s.wg.TCPTotal, "tcp")
	counter(c.wgFlows, s.wg.UDPTotal, "udp")

	q := s.dns
	counter(c.dnsQueries, q.Queries)
	counter(c.dnsFailures, q.Failures)
	counter(c.dnsLookups, q.ClusterQueries, "cluster")
	counter(c.dnsLookups, q.UpstreamQueries, "upstream")
	counter(c.dnsLookups, q.CacheHits, "cache")
	counter(c.dnsLookups, q.Stale, "stale")
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler serves GET /metrics from a registry of the daemon's own:
// its series, and the Go runtime's and the process's.
func metricsHandler(read func() metricsSnapshot, more ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		gometrics.Collector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(read),
	)
	reg.MustRegister(more...)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// metricsServer serves the metrics on --metrics-addr while the daemon runs.
// A nil *metricsServer (metrics disabled) does nothing.
type metricsServer struct {
	log  *slog.Logger
	ln   net.Listener
	srv  *http.Server
	done chan error // Serve's result, once serve started
}

// listenMetrics takes addr before the daemon serves anything, so a port in
// use stops it at once; "" disables metrics and returns nil.
func listenMetrics(logger *slog.Logger, addr string) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("serve metrics on --metrics-addr %s: %w (choose another --metrics-addr, or --metrics-addr= for none)", addr, err)
	}
	return &metricsServer{log: logger.With("subsystem", "metrics"), ln: ln}, nil
}

// serve starts answering with h.
func (m *metricsServer) serve(h http.Handler) {
	if m == nil {
		return
	}
	m.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	m.done = make(chan error, 1)
	go func() { m.done <- m.srv.Serve(m.ln) }()
	m.log.Info("serving metrics", "addr", m.ln.Addr().String())
}

// close stops serving, letting scrapes in progress finish for a moment.
func (m *metricsServer) close() {
	if m == nil {
		return
	}
	if m.srv == nil {
		m.ln.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		m.srv.Close()
	}
	if err := <-m.done; !errors.Is(err, http.ErrServerClosed) {
		m.log.Error("metrics server stopped", "err", err)
	}
}

// newDNSLatency is the histogram of DNS queries that left the resolver, by
// where they went; it lives as long as the daemon, across connections.
func newDNSLatency() (*prometheus.HistogramVec, func(string, time.Duration, error)) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "tunnel", Subsystem: "daemon", Name: "dns_query_duration_seconds",
		Help:    "Time of DNS queries sent to the cluster or to an upstream resolver (cache hits excluded).",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14), // 0.2 ms to 1.6 s
	}, []string{"via"})
	return h, func(via string, took time.Duration, _ error) { h.WithLabelValues(via).Observe(took.Seconds()) }
}
