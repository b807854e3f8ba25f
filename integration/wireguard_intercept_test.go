//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

// interceptStreams is how many intercepted connections the manager has
// carried to laptops over path (wireguard or session).
func interceptStreams(t *testing.T, path string) int {
	t.Helper()
	v := managerMetric(t, fmt.Sprintf(`tunnel_manager_intercept_streams_total{path=%q}`, path))
	if v == "" {
		return 0
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatalf("intercept_streams_total{path=%q} = %q", path, v)
	}
	return int(n)
}

// TestInterceptOverWireGuard: a user who may intercept but not
// port-forward gets no spares at the sidecars, so each intercepted
// connection comes through the manager, which opens it to the laptop over
// WireGuard, not over the session's port-forward. When the laptop's UDP
// is dropped, the manager falls back to the session's stream, and the
// intercept goes on answering.
func TestInterceptOverWireGuard(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	if err := lab.GrantInterceptOnly(context.Background(), h.Client, ns, "dev"); err != nil {
		t.Fatal(err)
	}
	ip := serviceIP(t, ns, "echo")

	l := newLaptop(t, "wgicpt", "dev")
	l.must("connect", "-n", ns)
	l.waitPath("wireguard", 5*time.Second)
	startLocalServer(t, l, "laptop-wgicpt", 7070)
	l.must("intercept", "echo", "--port", "7070:http")

	wg0, sess0 := interceptStreams(t, "wireguard"), interceptStreams(t, "session")
	const n = 20
	for i := range n {
		if got := fromNode(t, fmt.Sprintf("http://%s/wg-%d", ip, i)); !strings.Contains(got, "pod=laptop-wgicpt") {
			t.Fatalf("request %d to the intercepted Service: %s", i, got)
		}
	}
	wg1, sess1 := interceptStreams(t, "wireguard"), interceptStreams(t, "session")
	// The sidecar keeps its connections to the laptop open between
	// requests, so the manager counts connections, not requests: some,
	// and all of them over WireGuard.
	if wg1 == wg0 || sess1 != sess0 {
		t.Errorf("%d requests: the manager carried %d connections over WireGuard and %d over the session, want some and 0", n, wg1-wg0, sess1-sess0)
	}
	if _, direct := sidecarMetrics(t, ns, "app=echo"); direct != 0 {
		t.Errorf("%d sidecars used spares of a user who may not port-forward", direct)
	}

	// Without UDP the laptop's probes stop; the manager stops offering it
	// intercepts over WireGuard within seconds and uses the session.
	ctx := context.Background()
	if err := h.Lab.DropUDP(ctx, l.opt.Laptop, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Lab.DropUDP(ctx, l.opt.Laptop, false) })
	eventually(t, 15*time.Second, "intercepts over the session without UDP", func() (bool, string) {
		before := interceptStreams(t, "session")
		got := fromNode(t, "http://"+ip+"/no-udp")
		return strings.Contains(got, "pod=laptop-wgicpt") && interceptStreams(t, "session") > before, got
	})
	if err := h.Lab.DropUDP(ctx, l.opt.Laptop, false); err != nil {
		t.Fatal(err)
	}
	// A dial that failed keeps the manager off WireGuard for that laptop's
	// intercepts for 30 s.
	l.waitPath("wireguard", 15*time.Second)
	eventually(t, 45*time.Second, "intercepts over WireGuard again", func() (bool, string) {
		before := interceptStreams(t, "wireguard")
		got := fromNode(t, "http://"+ip+"/udp-again")
		return strings.Contains(got, "pod=laptop-wgicpt") && interceptStreams(t, "wireguard") > before, got
	})
}
