package manager

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// gaugeValue reads an unlabelled gauge or counter from m's registry.
func gaugeValue(t testing.TB, m *Manager, name string) float64 {
	return metricValue(t, m, name, nil)
}

// metricValue reads the sample of name whose labels include labels; a
// histogram gives its count.
func metricValue(t testing.TB, m *Manager, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := m.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue samples
				}
			}
			switch {
			case s.GetGauge() != nil:
				return s.GetGauge().GetValue()
			case s.GetCounter() != nil:
				return s.GetCounter().GetValue()
			case s.GetHistogram() != nil:
				return float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func scrape(t testing.TB, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestMetricsFollowTraffic(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	echo, _ := echoTCP(t)

	st, err := dialStream(t, sess, rpc.KindTCP, echo)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = st.Write([]byte("12345"))
	st.Close()
	if b, _ := io.ReadAll(st); string(b) != "12345" {
		t.Fatalf("echo %q", b)
	}
	if _, err := dialStream(t, sess, rpc.KindTCP, closedPort(t)); !errors.Is(err, rpc.StatusRefused) {
		t.Fatal(err)
	}
	u, err := dialStream(t, sess, rpc.KindUDP, echoUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = rpc.WriteDatagram(u, []byte("abc"))
	if _, err := rpc.ReadDatagram(u, make([]byte, rpc.MaxDatagram)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := controlClient(t, sess).Resolve(ctx, &managerpb.ResolveRequest{Query: query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0)}); err != nil {
		t.Fatal(err)
	}

	eventually(t, "TCP bytes counted both ways", func() bool {
		return metricValue(t, m, "tunnel_manager_bytes_total", map[string]string{"kind": "tcp", "direction": toCluster}) == 5 &&
			metricValue(t, m, "tunnel_manager_bytes_total", map[string]string{"kind": "tcp", "direction": toLaptop}) == 5
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tunnel_manager_sessions_total", nil, 1},
		{"tunnel_manager_sessions_active", nil, 1},
		{"tunnel_manager_streams_total", map[string]string{"kind": "tcp"}, 2},
		{"tunnel_manager_streams_total", map[string]string{"kind": "udp"}, 1},
		{"tunnel_manager_streams_total", map[string]string{"kind": "control"}, 1},
		{"tunnel_manager_dial_errors_total", map[string]string{"kind": "tcp", "status": "refused"}, 1},
		{"tunnel_manager_bytes_total", map[string]string{"kind": "udp", "direction": toCluster}, 3},
		{"tunnel_manager_bytes_total", map[string]string{"kind": "udp", "direction": toLaptop}, 3},
		{"tunnel_manager_udp_flows_active", nil, 1},
		{"tunnel_manager_dns_queries_total", map[string]string{"result": "answered"}, 1},
		{"tunnel_manager_dns_query_duration_seconds", nil, 1},
	} {
		if got := metricValue(t, m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	code, body := scrape(t, m.Handler(), http.MethodGet, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`tunnel_manager_sessions_total 1`,
		`tunnel_manager_streams_total{kind="tcp"} 2`,
		`tunnel_manager_dns_query_duration_seconds_bucket`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHandlerHealthz(t *testing.T) {
	m, _ := newTestManager(t, nil)
	if code, body := scrape(t, m.Handler(), http.MethodGet, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, _ := scrape(t, m.Handler(), http.MethodGet, "/nope"); code != http.StatusNotFound {
		t.Errorf("/nope: %d", code)
	}
}

func TestManagersHaveTheirOwnRegistry(t *testing.T) {
	a, _ := newTestManager(t, nil)
	b, _ := newTestManager(t, nil) // would panic on a shared registry
	a.metrics.sessionsTotal.Inc()
	if gaugeValue(t, b, "tunnel_manager_sessions_total") != 0 {
		t.Error("a's sessions show in b")
	}
}
