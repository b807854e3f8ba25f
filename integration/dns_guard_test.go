//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"tunnel.dev/tunnel/integration/lab"
)

// TestResolverAnswersOnlyThisMachine: the laptop's resolver listens on an
// address of the machine (a kernel socket, for speed), so a neighbour that
// routes that address to the laptop reaches it. The neighbour here is the
// node's namespace, the laptop's next hop, asking with dig over UDP and
// TCP for a cluster name and for a name only the laptop's upstream
// resolver knows: REFUSED each time, while the laptop's own dig is
// answered. Once the laptop forwards packets (a machine running
// containers does), the resolver answers those it routes for, as it did
// when it answered inside the device.
func TestResolverAnswersOnlyThisMachine(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "dnsguard", "admin")
	l.must("connect", "-n", ns)
	out, err := l.sh("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")
	laptopAddr := strings.TrimSpace(out)
	if err != nil || laptopAddr == "" {
		t.Fatalf("the laptop's address: %v %q", err, out)
	}
	var st struct {
		DNS struct{ Nameserver string } `json:"dns"`
	}
	if raw := l.must("status", "-o", "json"); json.Unmarshal([]byte(raw), &st) != nil {
		t.Fatalf("status -o json: %s", raw)
	}
	resolver := st.DNS.Nameserver
	if resolver == "" {
		t.Fatal("status names no resolver")
	}
	ctx := context.Background()
	if out, err := h.Run(ctx, node, "ip", "route", "replace", resolver+"/32", "via", laptopAddr); err != nil {
		t.Fatalf("route the resolver's address to the laptop from the node: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = h.Run(context.Background(), node, "ip", "route", "del", resolver+"/32") })

	cluster := "echo." + ns + ".svc." + h.Config.ClusterDomain
	status := func(from lab.ExecOptions, args string) string {
		t.Helper()
		if from.Laptop == "" {
			// From the node's own address: the lab refuses the node
			// traffic from its laptop links' side.
			args = "-b " + upstreamAnswer + " " + args
		}
		out, err := h.Run(ctx, from, "sh", "-c", fmt.Sprintf("dig +tries=1 +time=2 @%s %s | awk '/status:/ {s=$6; sub(/,/, \"\", s); print s}'", resolver, args))
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(out)
	}
	for _, name := range []string{cluster, "jira.corp"} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			if got := status(node, proto+" "+name); got != "REFUSED" {
				t.Errorf("the node asked %s (%s) through the laptop: status %q, want REFUSED", name, proto, got)
			}
			if got := status(l.opt, proto+" "+name); got != "NOERROR" {
				t.Errorf("the laptop asked %s (%s): status %q, want NOERROR", name, proto, got)
			}
		}
	}

	// A laptop that forwards answers those it routes for; never the
	// cluster's addresses.
	if out, err := l.sh("sysctl -qw net.ipv4.ip_forward=1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = l.sh("sysctl -qw net.ipv4.ip_forward=0") })
	if got := status(node, cluster); got != "NOERROR" {
		t.Errorf("the node asked %s through a forwarding laptop: status %q, want NOERROR", cluster, got)
	}
}
