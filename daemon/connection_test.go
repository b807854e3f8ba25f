package daemon

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// The manager's subnets are checked at every change: none wider than /8,
// and never the API server's or the upstream resolvers' addresses.
func TestRouteSetChecksWhatTheManagerSends(t *testing.T) {
	c := &connection{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.pin(netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.209.0.1"))
	got := c.routeSet(&managerpb.ClusterInfo{
		ServiceSubnets: []string{"10.96.0.0/16", "0.0.0.0/0", "::/0"},
		PodSubnets:     []string{"10.244.0.0/16", "8.0.0.0/7", "not a prefix"},
	})
	for _, p := range got {
		if p.Contains(netip.MustParseAddr("10.96.0.1")) {
			t.Errorf("the API server's address is routed: %v", got)
		}
		if p.Bits() < 8 {
			t.Errorf("a prefix wider than /8 is routed: %v", got)
		}
	}
	if !slices.ContainsFunc(got, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr("10.96.0.2")) }) ||
		!slices.Contains(got, netip.MustParsePrefix("10.244.0.0/16")) {
		t.Errorf("the cluster's own subnets are missing: %v", got)
	}
}
