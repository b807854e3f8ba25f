//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/integration/lab"
)

// dataPath is what `tunnel status -o json` says of the path.
type dataPath struct {
	Carrier        string `json:"carrier"`
	Why            string `json:"why"`
	Endpoint       string `json:"endpoint"`
	WireguardFlows string `json:"wireguardFlows"`
}

func (l *laptop) path() dataPath {
	l.t.Helper()
	var st struct {
		Path dataPath `json:"path"`
	}
	raw := l.must("status", "-o", "json")
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		l.t.Fatalf("status -o json: %v\n%s", err, raw)
	}
	return st.Path
}

// waitPath waits for the path to be carrier and says how long it took.
func (l *laptop) waitPath(carrier string, within time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	for {
		p := l.path()
		if p.Carrier == carrier {
			return time.Since(start)
		}
		if time.Since(start) > within {
			l.t.Fatalf("the path is %q (%s), not %s, after %s", p.Carrier, p.Why, carrier, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wgNodePort is the node port of the WireGuard path's Service.
func wgNodePort(t *testing.T) int32 {
	t.Helper()
	svc, err := h.Client.CoreV1().Services(manifest.Namespace).Get(context.Background(), manifest.WireGuardService, metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 {
		t.Fatalf("the WireGuard service: %v", err)
	}
	return svc.Spec.Ports[0].NodePort
}

// TestWireGuardPathCarriesConnections: on connect the laptop finds the
// manager's WireGuard port through its NodePort, and connections by name
// and address take it instead of the API server: the
// manager's port-forward carries none of them.
func TestWireGuardPathCarriesConnections(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "wgpath", "admin")
	l.must("connect", "-n", ns)
	took := l.waitPath("wireguard", 5*time.Second)
	t.Logf("the WireGuard path was up %s after connect returned", took.Round(10*time.Millisecond))
	p := l.path()
	if want := fmt.Sprintf("10.209.0.1:%d", wgNodePort(t)); p.Endpoint != want {
		t.Errorf("the path's endpoint %q, want the node's address and port %s", p.Endpoint, want)
	}
	if out := l.must("status"); !strings.Contains(out, "Path:       wireguard via ") {
		t.Errorf("status does not say the path:\n%s", out)
	}

	before := managerStreams(t)
	for i := range 5 {
		out, err := l.sh(fmt.Sprintf("curl -sS --max-time 5 http://echo.%s/%d", ns, i))
		if err != nil || !strings.Contains(out, "pod=echo-") {
			t.Fatalf("curl over the WireGuard path: %v\n%s", err, out)
		}
	}
	// A long download, counted while it runs.
	out, err := l.sh(fmt.Sprintf("curl -sS --max-time 20 -o /dev/null -w '%%{size_download}' 'http://echo.%s/bytes?n=50000000'", ns))
	if err != nil || strings.TrimSpace(out) != "50000000" {
		t.Fatalf("50 MB over the WireGuard path: %v\n%s", err, out)
	}
	if after := managerStreams(t); after["tcp"] != before["tcp"]+6 {
		t.Errorf("the manager counted %v TCP connections after, %v before: want the 6 of the WireGuard path", after, before)
	}
	if n := laptopStreams(t, l); n != 0 {
		t.Errorf("%.0f TCP streams went over the port-forward", n)
	}
}

// TestWireGuardFallsBackWhenUDPIsDropped: a laptop behind a firewall that
// drops UDP connects on the port-forward path within 2 s and says why;
// when UDP gets through again, new connections take WireGuard; when it is
// dropped again, they take the port-forward within seconds, by themselves.
func TestWireGuardFallsBackWhenUDPIsDropped(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "wgfall", "admin")
	ctx := context.Background()
	if err := h.Lab.DropUDP(ctx, "wgfall", true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Lab.DropUDP(ctx, "wgfall", false) })
	start := time.Now()
	l.must("connect", "-n", ns)
	curl := func(what string) {
		t.Helper()
		out, err := l.sh(fmt.Sprintf("curl -sS --max-time 5 http://echo.%s/", ns))
		if err != nil || !strings.Contains(out, "pod=echo-") {
			t.Fatalf("curl %s: %v\n%s", what, err, out)
		}
	}
	curl("right after connect, UDP dropped")
	for p := l.path(); !strings.Contains(p.Why, "no answer over UDP"); p = l.path() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the path says %q after %s", p.Why, time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("decided on the port-forward %s after connect started", time.Since(start).Round(10*time.Millisecond))
	if p := l.path(); p.Carrier != "port-forward" {
		t.Fatalf("path %+v with UDP dropped", p)
	}
	curl("on the port-forward path")

	if err := h.Lab.DropUDP(ctx, "wgfall", false); err != nil {
		t.Fatal(err)
	}
	took := l.waitPath("wireguard", 15*time.Second)
	t.Logf("back on WireGuard %s after UDP got through again", took.Round(10*time.Millisecond))
	curl("on WireGuard again")

	// A connection that only waits (a response 25 s away) is reset in the
	// laptop's kernel when the path goes down, rather than waiting out
	// its own timeout on a path that can no longer answer.
	type result struct {
		out   string
		err   error
		after time.Duration
	}
	waiting := make(chan result, 1)
	go func() {
		start := time.Now()
		out, err := l.sh(fmt.Sprintf("curl -sS --max-time 40 'http://echo.%s/delay?ms=25000'", ns))
		waiting <- result{out, err, time.Since(start)}
	}()
	time.Sleep(time.Second)
	if err := h.Lab.DropUDP(ctx, "wgfall", true); err != nil {
		t.Fatal(err)
	}
	took = l.waitPath("port-forward", 10*time.Second)
	t.Logf("on the port-forward %s after UDP was dropped", took.Round(10*time.Millisecond))
	curl("after the WireGuard path went down")
	r := <-waiting
	if r.err == nil || !strings.Contains(r.out, "reset") || r.after > 15*time.Second {
		t.Errorf("a waiting connection when the path went down: %v after %s\n%s; want it reset", r.err, r.after.Round(100*time.Millisecond), r.out)
	} else {
		t.Logf("a waiting connection was reset %s after it started", r.after.Round(100*time.Millisecond))
	}
}

// TestWireGuardLeavesALossyLink: on a link that loses 5% of packets each
// way, where WireGuard's end-to-end TCP does far worse than the
// port-forward's, the daemon sees its probes lost and sends new
// connections over the port-forward, saying why; once the link is clean
// again, WireGuard takes them again.
func TestWireGuardLeavesALossyLink(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "wglossy", "admin")
	ctx := context.Background()
	t.Cleanup(func() { h.Lab.Shape(ctx, "wglossy", lab.ShapeOptions{}) })
	l.must("connect", "-n", ns)
	l.waitPath("wireguard", 10*time.Second)
	if err := h.Lab.Shape(ctx, "wglossy", lab.ShapeOptions{Loss: 0.05}); err != nil {
		t.Fatal(err)
	}
	took := l.waitPath("port-forward", 60*time.Second)
	p := l.path()
	if !strings.Contains(p.Why, "lost") || !strings.Contains(p.Why, "probes") {
		t.Fatalf("the path is on the port-forward for %q, want the probes' loss", p.Why)
	}
	t.Logf("on the port-forward %s after the link began to lose 5%%: %s", took.Round(100*time.Millisecond), p.Why)
	out, err := l.sh(fmt.Sprintf("curl -sS --retry 3 --max-time 10 http://echo.%s/", ns))
	if err != nil || !strings.Contains(out, "pod=echo-") {
		t.Fatalf("curl on the lossy link: %v\n%s", err, out)
	}
	if err := h.Lab.Shape(ctx, "wglossy", lab.ShapeOptions{}); err != nil {
		t.Fatal(err)
	}
	took = l.waitPath("wireguard", 90*time.Second)
	t.Logf("back on WireGuard %s after the link was clean again", took.Round(100*time.Millisecond))
}

// managerStreams reads the manager's count of streams by kind.
func managerStreams(t *testing.T) map[string]float64 {
	t.Helper()
	got := map[string]float64{}
	for _, kind := range []string{"tcp", "udp"} {
		got[kind], _ = strconv.ParseFloat(managerMetric(t, fmt.Sprintf(`tunnel_manager_streams_total{kind="%s"}`, kind)), 64)
	}
	return got
}

// laptopStreams is how many TCP connections the laptop's userspace stack
// (the port-forward path) has carried.
func laptopStreams(t *testing.T, l *laptop) float64 {
	t.Helper()
	out, err := l.sh("curl -sf --max-time 5 http://127.0.0.1:9095/metrics")
	if err != nil {
		t.Fatalf("the daemon's metrics: %v\n%s", err, out)
	}
	return metricValue(out, `tunnel_daemon_flows_total{proto="tcp"}`) - metricValue(out, `tunnel_daemon_wireguard_flows_total{proto="tcp"}`)
}

// TestWireGuardEndpointFromTheUser: --wireguard-endpoint replaces the
// addresses the manager names. A wrong one leaves the laptop on the
// port-forward, saying which address got no answer; the right one carries
// connections.
func TestWireGuardEndpointFromTheUser(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "wgendpoint", "admin")
	curl := func() {
		t.Helper()
		if out, err := l.sh(fmt.Sprintf("curl -sS --max-time 5 http://echo.%s/", ns)); err != nil || !strings.Contains(out, "pod=echo-") {
			t.Fatalf("curl: %v\n%s", err, out)
		}
	}
	l.must("connect", "-n", ns, "--wireguard-endpoint", "10.209.0.1:9")
	start := time.Now()
	for p := l.path(); !strings.Contains(p.Why, "no answer over UDP from 10.209.0.1:9"); p = l.path() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("with a wrong endpoint the path says %+v", p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	curl()
	l.must("quit")

	right := fmt.Sprintf("10.209.0.1:%d", wgNodePort(t))
	l.must("connect", "-n", ns, "--wireguard-endpoint", right)
	l.waitPath("wireguard", 5*time.Second)
	if p := l.path(); p.Endpoint != right {
		t.Errorf("the path's endpoint %q, want %s", p.Endpoint, right)
	}
	curl()
	if out, err := l.run("connect", "-n", ns, "--wireguard-endpoint", "no-port"); err == nil || !strings.Contains(out, "want HOST:PORT") {
		t.Errorf("--wireguard-endpoint no-port: %v\n%s", err, out)
	}
}
