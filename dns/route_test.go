package dns

import (
	"net/netip"
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	r := NewResolver(nil, nil, Config{Namespace: "Demo"})
	// shop and com are top-level domains: <svc>.shop stays the world's.
	r.SetNamespaces([]string{"demo", "payments", "shop", "com"})
	long := strings.Repeat("a", 63)
	tests := []struct {
		name, want string // want "" means no expansion
	}{
		{"echo.", "echo.demo.svc.cluster.local."},
		{"echo.demo.", "echo.demo.svc.cluster.local."},
		{"echo.payments.", "echo.payments.svc.cluster.local."},
		{"echo.shop.", ""},
		{"github.com.", ""},
		{"www.github.com.", ""},
		{"_https._tcp.github.com.", ""},
		{"echo.nowhere.", ""},
		{"echo.shop.svc.", "echo.shop.svc.cluster.local."},
		{"echo.anything.svc.", "echo.anything.svc.cluster.local."},
		{"10-1-2-3.shop.pod.", "10-1-2-3.shop.pod.cluster.local."},
		{"_http._tcp.echo.", "_http._tcp.echo.demo.svc.cluster.local."},
		{"_http._tcp.echo.payments.", "_http._tcp.echo.payments.svc.cluster.local."},
		{"_http._tcp.echo.shop.svc.", "_http._tcp.echo.shop.svc.cluster.local."},
		{"web-0.nginx.payments.", "web-0.nginx.payments.svc.cluster.local."},
		{"a.b.c.d.shop.", ""}, // five labels: a name of its own
		{"www.example.com.", ""},
		{"a.b.c.", ""},
		{"svc.", "svc.demo.svc.cluster.local."},
		{".", ""},
		{"4.3.2.1.in-addr.arpa.", ""},
		{"arpa.", ""},
		{long + "." + long + "." + long + "." + long[:50] + ".", ""}, // too long once expanded
	}
	for _, tt := range tests {
		got, ok := r.expand(tt.name)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("expand(%q) = %q, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
}

func TestExpandWithoutNamespace(t *testing.T) {
	r := NewResolver(nil, nil, Config{ClusterDomain: "corp.example."})
	r.SetNamespaces([]string{"orders"})
	for name, want := range map[string]string{
		"echo.":               "",
		"_http._tcp.echo.":    "",
		"echo.orders.":        "echo.orders.svc.corp.example.",
		"echo.orders.svc.":    "echo.orders.svc.corp.example.",
		"echo.orders.example": "",
	} {
		if got, _ := r.expand(name); got != want {
			t.Errorf("expand(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestIsClusterName(t *testing.T) {
	r := NewResolver(nil, nil, Config{ClusterDomain: "Cluster.Local.", Include: []string{"corp.internal", ".lab.", "", "."}})
	r.SetClusterSubnets([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:10::/64")})
	tests := []struct {
		name string
		want bool
	}{
		{"cluster.local.", true},
		{"echo.demo.svc.cluster.local.", true},
		{"notcluster.local.", false},
		{"db.corp.internal.", true},
		{"corp.internal.", true},
		{"xcorp.internal.", false},
		{"host.lab.", true},
		{"example.com.", false}, // "" and "." are not suffixes that take everything
		{"2.1.96.10.in-addr.arpa.", true},
		{"2.1.112.10.in-addr.arpa.", false},
		{"96.10.in-addr.arpa.", false}, // partial reverse names are not addresses
		{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa.", true},
		{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa.", false},
	}
	for _, tt := range tests {
		if got := r.isClusterName(tt.name); got != tt.want {
			t.Errorf("isClusterName(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestReverseAddr(t *testing.T) {
	tests := []struct {
		name string
		want string // "" means not a full reverse name
	}{
		{"4.3.2.1.in-addr.arpa.", "1.2.3.4"},
		{"255.0.0.10.in-addr.arpa.", "10.0.0.255"},
		{"256.0.0.10.in-addr.arpa.", ""},
		{"01.0.0.10.in-addr.arpa.", ""},
		{"-1.0.0.10.in-addr.arpa.", ""},
		{"x.0.0.10.in-addr.arpa.", ""},
		{"0.0.10.in-addr.arpa.", ""},
		{"5.4.3.2.1.in-addr.arpa.", ""},
		{"in-addr.arpa.", ""},
		{"b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.", "4321:0:1:2:3:4:567:89ab"},
		{"B.A.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.", "4321:0:1:2:3:4:567:89ab"},
		{"g.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.", ""},
		{"ba.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.", ""},
		{"1.ip6.arpa.", ""},
		{"example.com.", ""},
	}
	for _, tt := range tests {
		got, ok := reverseAddr(tt.name)
		if ok != (tt.want != "") || (ok && got != netip.MustParseAddr(tt.want)) {
			t.Errorf("reverseAddr(%q) = %v, %v; want %q", tt.name, got, ok, tt.want)
		}
	}
}

func TestIsPublicLabel(t *testing.T) {
	for label, want := range map[string]bool{
		"com": true, "dev": true, "shop": true, "io": true, "DEV.": true,
		"corp": false, "internal": false, "e2e-abc": false, "kube-system": false, "ck": true, "np": true, "jm": true,
		"": false, "github.com": false, "co.uk": false,
	} {
		if got := IsPublicLabel(label); got != want {
			t.Errorf("IsPublicLabel(%q) = %v, want %v", label, got, want)
		}
	}
}

// A cluster domain that is a public suffix is not taken: every name under
// it would go to the cluster.
func TestPublicClusterDomainIsRefused(t *testing.T) {
	r := NewResolver(nil, nil, Config{ClusterDomain: "com"})
	if r.isClusterName("github.com.") {
		t.Error("github.com went to the cluster with cluster domain com")
	}
	if !IsPublicSuffix("co.uk") || IsPublicSuffix("cluster.local") || IsPublicSuffix("example.com") {
		t.Error("IsPublicSuffix is wrong about co.uk, cluster.local or example.com")
	}
}
