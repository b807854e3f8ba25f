package daemon

import (
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"tunnel.dev/tunnel/dns"
	"tunnel.dev/tunnel/tun/netstack"
	"tunnel.dev/tunnel/wgpath"
	"tunnel.dev/tunnel/workload"
)

var daemonSeries = []string{
	"tunnel_daemon_connected", "tunnel_daemon_session_up", "tunnel_daemon_session_reconnects_total",
	"tunnel_daemon_flows_active", "tunnel_daemon_flows_total", "tunnel_daemon_bytes_total",
	"tunnel_daemon_dial_errors_total", "tunnel_daemon_dials_refused_total", "tunnel_daemon_dropped_dials_total",
	"tunnel_daemon_dns_queries_total", "tunnel_daemon_dns_failures_total", "tunnel_daemon_dns_lookups_total",
	"tunnel_daemon_wireguard_up", "tunnel_daemon_wireguard_flows_total",
}

// The collector maps each counter of a snapshot to its series and labels,
// with the types and names Prometheus expects.
func TestCollectorSeries(t *testing.T) {
	snap := metricsSnapshot{
		connected: true, sessionUp: true, reconnects: 3,
		traffic: netstack.Stats{
			TCPActive: 2, TCPTotal: 10, UDPActive: 1, UDPTotal: 4,
			BytesSent: 1500, BytesReceived: 9000, DialErrors: 5, DialsRefused: 2, DroppedDials: 6,
		},
		dns:  dns.ResolverStats{Queries: 20, ClusterQueries: 7, UpstreamQueries: 8, CacheHits: 9, Stale: 3, Failures: 1},
		wg:   wgpath.Stats{TCPTotal: 6, UDPTotal: 1},
		wgUp: true,
	}
	reg := prometheus.NewPedanticRegistry() // also checks Collect against Describe
	reg.MustRegister(newCollector(func() metricsSnapshot { return snap }))
	body := scrape(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	want := map[string]string{
		"tunnel_daemon_connected":                           "1",
		"tunnel_daemon_session_up":                          "1",
		"tunnel_daemon_session_reconnects_total":            "3",
		`tunnel_daemon_flows_active{proto="tcp"}`:           "2",
		`tunnel_daemon_flows_active{proto="udp"}`:           "1",
		`tunnel_daemon_flows_total{proto="tcp"}`:            "10",
		`tunnel_daemon_flows_total{proto="udp"}`:            "4",
		`tunnel_daemon_bytes_total{direction="to_cluster"}`: "1500",
		`tunnel_daemon_bytes_total{direction="to_laptop"}`:  "9000",
		"tunnel_daemon_dial_errors_total":                   "5",
		"tunnel_daemon_dials_refused_total":                 "2",
		"tunnel_daemon_dropped_dials_total":                 "6",
		"tunnel_daemon_dns_queries_total":                   "20",
		"tunnel_daemon_dns_failures_total":                  "1",
		`tunnel_daemon_dns_lookups_total{via="cluster"}`:    "7",
		`tunnel_daemon_dns_lookups_total{via="upstream"}`:   "8",
		`tunnel_daemon_dns_lookups_total{via="cache"}`:      "9",
		`tunnel_daemon_dns_lookups_total{via="stale"}`:      "3",
		"tunnel_daemon_wireguard_up":                        "1",
		`tunnel_daemon_wireguard_flows_total{proto="tcp"}`:  "6",
		`tunnel_daemon_wireguard_flows_total{proto="udp"}`:  "1",
	}
	if got := samples(body); !maps.Equal(got, want) {
		t.Errorf("scrape:\n%s\nwant samples %v", body, want)
	}
	for _, name := range daemonSeries {
		typ := "counter"
		if !strings.HasSuffix(name, "_total") {
			typ = "gauge"
		}
		if !strings.Contains(body, "# TYPE "+name+" "+typ+"\n") {
			t.Errorf("%s is not a %s", name, typ)
		}
	}
	if problems, err := promlint.New(strings.NewReader(body)).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// A disconnected daemon still answers: every series, connected 0, and the
// Go runtime's and the process's series beside them.
func TestMetricsDisconnected(t *testing.T) {
	d := &Daemon{}
	body := scrape(t, metricsHandler(d.metricsSnapshot))
	for _, name := range append(daemonSeries, "go_goroutines", "process_start_time_seconds") {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("no %s in the scrape", name)
		}
	}
	got := samples(body)
	for series, want := range map[string]string{
		"tunnel_daemon_connected":                "0",
		"tunnel_daemon_session_up":               "0",
		`tunnel_daemon_flows_total{proto="tcp"}`: "0",
	} {
		if got[series] != want {
			t.Errorf("%s = %q, want %q", series, got[series], want)
		}
	}
}

// The daemon's current connection is read when scraped: the session's state
// and reconnects, and the resolver's own counters.
func TestMetricsConnection(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	sess := newSession(logger, nil, workload.Client{}, "tunnel-system", nil)
	sess.setState("connected")
	sess.reconnects.Add(2)
	res := dns.NewResolver(logger, nil, dns.Config{ClusterDomain: "cluster.local"})
	defer res.Close()
	// No cluster to ask: the lookup goes to the cluster, and fails.
	q := new(mdns.Msg)
	q.SetQuestion("web.default.svc.cluster.local.", mdns.TypeA)
	w := &answerRecorder{}
	res.ServeDNS(w, q)
	if w.msg == nil || w.msg.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("answer %v, want SERVFAIL", w.msg)
	}

	d := &Daemon{}
	d.live.Store(&connection{sess: sess, resolver: res}) // no stack: traffic reads 0
	got := samples(scrape(t, metricsHandler(d.metricsSnapshot)))
	for series, want := range map[string]string{
		"tunnel_daemon_connected":                           "1",
		"tunnel_daemon_session_up":                          "1",
		"tunnel_daemon_session_reconnects_total":            "2",
		"tunnel_daemon_dns_queries_total":                   "1",
		"tunnel_daemon_dns_failures_total":                  "1",
		`tunnel_daemon_dns_lookups_total{via="cluster"}`:    "1",
		`tunnel_daemon_dns_lookups_total{via="upstream"}`:   "0",
		`tunnel_daemon_bytes_total{direction="to_cluster"}`: "0",
	} {
		if got[series] != want {
			t.Errorf("%s = %q, want %q", series, got[series], want)
		}
	}

	sess.setState("reconnecting: port-forward lost")
	if v := value(t, d, "tunnel_daemon_session_up"); v != "0" {
		t.Errorf("session_up while reconnecting = %s, want 0", v)
	}
	d.live.Store(nil) // disconnected: the counters start again
	if v := value(t, d, "tunnel_daemon_dns_queries_total"); v != "0" {
		t.Errorf("dns_queries_total after disconnect = %s, want 0", v)
	}
}

// --metrics-addr: a port in use is an error naming the flag, "" serves
// nothing, and close stops the server.
func TestMetricsServer(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = listenMetrics(logger, taken.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--metrics-addr") || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("listen on a port in use: %v, want EADDRINUSE naming --metrics-addr", err)
	}

	none, err := listenMetrics(logger, "")
	if none != nil || err != nil {
		t.Errorf(`listenMetrics("") = %v, %v; want nothing`, none, err)
	}
	none.serve(http.NotFoundHandler()) // disabled: both do nothing
	none.close()

	m, err := listenMetrics(logger, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{}
	m.serve(metricsHandler(d.metricsSnapshot))
	url := "http://" + m.ln.Addr().String() + "/metrics"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "tunnel_daemon_connected 0") {
		t.Errorf("GET /metrics: %s\n%s", resp.Status, b)
	}
	m.close()
	if _, err := http.Get(url); err == nil {
		t.Error("metrics still answer after close")
	}
}

func TestMetricsAddrFlag(t *testing.T) {
	f := Command().Flags().Lookup("metrics-addr")
	if f == nil || f.DefValue != "127.0.0.1:9095" {
		t.Fatalf("--metrics-addr flag: %+v, want default 127.0.0.1:9095", f)
	}
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

// samples maps each series of a scrape in the text format to its value.
func samples(body string) map[string]string {
	m := map[string]string{}
	for line := range strings.Lines(body) {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			m[line[:i]] = line[i+1:]
		}
	}
	return m
}

// value is the value of one series of a scrape of d's metrics.
func value(t *testing.T, d *Daemon, series string) string {
	t.Helper()
	v, ok := samples(scrape(t, metricsHandler(d.metricsSnapshot)))[series]
	if !ok {
		t.Fatalf("no %s in the scrape", series)
	}
	return v
}

// answerRecorder is the resolver's client: it keeps the answer.
type answerRecorder struct {
	mdns.ResponseWriter // unused methods panic
	msg                 *mdns.Msg
}

func (w *answerRecorder) WriteMsg(m *mdns.Msg) error { w.msg = m; return nil }
func (w *answerRecorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
}

func TestDNSLatencyHistogram(t *testing.T) {
	h, observe := newDNSLatency()
	observe("cluster", 3*time.Millisecond, nil)
	observe("upstream", 40*time.Millisecond, nil)
	body := scrape(t, metricsHandler((&Daemon{}).metricsSnapshot, h))
	for _, want := range []string{
		`tunnel_daemon_dns_query_duration_seconds_count{via="cluster"} 1`,
		`tunnel_daemon_dns_query_duration_seconds_count{via="upstream"} 1`,
		`tunnel_daemon_dns_query_duration_seconds_bucket{via="cluster",le="0.0032"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
