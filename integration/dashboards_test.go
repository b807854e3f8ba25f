//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"tunnel.dev/tunnel/dashboards"
	"tunnel.dev/tunnel/integration/lab"
)

// The dashboard of tunnel itself draws from the lab's Prometheus: after a
// connection, lookups, a dial the manager refuses and an intercept
// (through the manager, answered by the laptop, then by the app when the
// laptop's process is down), every panel's query returns series from the
// daemon, the manager and the sidecar.
func TestTunnelDashboardQueriesReturnData(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	start := time.Now()
	ctx := context.Background()
	// The lab's dev user may not port-forward to pods, so its daemon keeps
	// no spare direct streams, and without WireGuard a sidecar cannot reach
	// the laptop itself: every intercepted connection crosses the manager,
	// which counts it.
	const ns, name = "dev", "dash"
	deployEchoInDev(t, name)
	ip := serviceIP(t, ns, name)

	l := newLaptop(t, "dash", "dev")
	stop, err := h.Lab.ScrapeLaptop(ctx, "dash", "127.0.0.1:9095") // the daemon's default
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	l.must("connect", "-n", ns, "--wireguard=false")
	for i := range 3 {
		if out, err := l.sh(fmt.Sprintf("curl -sS --max-time 10 http://%s/by-name-%d", name, i)); err != nil {
			t.Fatalf("by name: %v\n%s", err, out)
		}
	}
	// A dial beyond what the user may reach, refused by the manager.
	if out, err := l.sh(fmt.Sprintf("curl -sS --max-time 5 http://%s:8080/health", podIP(t, "kube-system", "k8s-app=kube-dns"))); err == nil {
		t.Errorf("dev reached a kube-system pod:\n%s", out)
	}

	srv := startLocalServer(t, l, "laptop-dash", 7074)
	l.must("intercept", name, "--port", "7074:http")
	for i := range 3 {
		if got := fromNode(t, fmt.Sprintf("http://%s/laptop-%d", ip, i)); !strings.Contains(got, "pod=laptop-dash") {
			t.Fatalf("request %d to the intercepted Service: %s", i, got)
		}
	}
	srv.stop()
	if got := fromNode(t, "http://"+ip+"/fallback"); !strings.Contains(got, "pod="+name+"-") {
		t.Errorf("with the local server stopped, the app should answer: %s", got)
	}

	dashboardReturnsData(t, "tunnel.json", nil, start)
	l.must("leave", name+"-http")
}

// dashboardReturnsData asks the lab's Prometheus every query of one of the
// repository's dashboards, with vars for its variables, over the time
// since start, until each returns a series (or a minute has passed).
func dashboardReturnsData(t *testing.T, file string, vars map[string]string, start time.Time) {
	t.Helper()
	data, err := os.ReadFile("../dashboards/" + file)
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"__rate_interval": "10s"}
	for k, v := range vars {
		all[k] = v
	}
	exprs, err := dashboards.Expressions(data, all)
	if err != nil || len(exprs) == 0 {
		t.Fatalf("%s's queries: %v (%d)", file, err, len(exprs))
	}
	c, err := api.NewClient(api.Config{Address: lab.PrometheusURL()})
	if err != nil {
		t.Fatal(err)
	}
	prom := promv1.NewAPI(c)
	empty := func() []string {
		var none []string
		for _, q := range exprs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			v, _, _, err := prom.QueryRange(ctx, q, promv1.Range{Start: start, End: time.Now(), Step: time.Second})
			cancel()
			if m, ok := v.(model.Matrix); err != nil || !ok || len(m) == 0 {
				none = append(none, fmt.Sprintf("%s (%v)", q, err))
			}
		}
		return none
	}
	eventually(t, time.Minute, file+"'s queries return series", func() (bool, string) {
		none := empty()
		return len(none) == 0, fmt.Sprintf("%d of %d return nothing: %s", len(none), len(exprs), strings.Join(none, "; "))
	})
	t.Logf("%s: all %d queries return series", file, len(exprs))
}
