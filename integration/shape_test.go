//go:build e2e

package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

// TestShapeMakesTheRoundTripAndLossItSays measures what `lab shape` made
// of a laptop's link: HTTP requests to the node's Prometheus (a new
// connection each: two round trips) take the round trip asked for, and
// DNS queries to the node's resolver are lost as often as the loss asked
// for each way makes likely; --off gives the plain link back.
func TestShapeMakesTheRoundTripAndLossItSays(t *testing.T) {
	ctx := context.Background()
	l := newLaptop(t, "shaped", "admin")
	t.Cleanup(func() { h.Lab.Shape(ctx, "shaped", lab.ShapeOptions{}) })
	p50 := func() time.Duration {
		t.Helper()
		out, err := l.sh(h.EchoClient() + " latency " + lab.PrometheusURL() + "/-/ready 40")
		if err != nil {
			t.Fatalf("latency: %v\n%s", err, out)
		}
		us, _ := strconv.ParseFloat(figures(out)["p50_us"], 64)
		return time.Duration(us) * time.Microsecond
	}
	plain := p50()
	if err := h.Lab.Shape(ctx, "shaped", lab.ShapeOptions{RTT: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	shaped := p50()
	t.Logf("a request: %s plain, %s with a 20 ms round trip", plain, shaped)
	if added := shaped - plain; added < 38*time.Millisecond || added > 55*time.Millisecond {
		t.Errorf("a request (two round trips) took %s more, want about 40 ms", added)
	}

	const loss, queries = 0.03, 600
	if err := h.Lab.Shape(ctx, "shaped", lab.ShapeOptions{Loss: loss}); err != nil {
		t.Fatal(err)
	}
	out, _ := l.sh("seq " + strconv.Itoa(queries) + " | xargs -P 30 -I{} sh -c 'dig +tries=1 +time=1 +short @10.209.0.1 upstream.lab.test >/dev/null 2>&1 || echo lost'")
	lost := strings.Count(out, "lost")
	// A query and its answer each cross the link once: 5.9% of 600 is
	// 35, with a standard deviation of 6.
	t.Logf("%d of %d DNS queries lost with %.0f%% loss each way", lost, queries, loss*100)
	if lost < 12 || lost > 65 {
		t.Errorf("%d of %d queries lost, want about %.0f", lost, queries, queries*(1-(1-loss)*(1-loss)))
	}

	if err := h.Lab.Shape(ctx, "shaped", lab.ShapeOptions{}); err != nil {
		t.Fatal(err)
	}
	if back := p50(); back > plain+5*time.Millisecond {
		t.Errorf("after --off a request takes %s, %s before", back, plain)
	}
	if out, _ := l.sh("iptables -t mangle -S | grep -c TLAB-SHAPE"); strings.TrimSpace(out) != "0" {
		t.Errorf("shape left rules: %s", out)
	}
}

// figures reads the test app's name=value figures as strings.
func figures(out string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(out) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}
