package tun

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestRouteSet(t *testing.T) {
	for _, tc := range []struct {
		name             string
		include, exclude []netip.Prefix
		want             []netip.Prefix
	}{
		{"plain", prefixes("10.96.0.0/16", "10.244.0.0/24"), nil, prefixes("10.96.0.0/16", "10.244.0.0/24")},
		{"duplicates and nesting", prefixes("10.244.1.0/24", "10.244.0.0/16", "10.244.0.0/16"), nil, prefixes("10.244.0.0/16")},
		{"unmasked", prefixes("10.96.3.4/16"), nil, prefixes("10.96.0.0/16")},
		{"exclude all", prefixes("10.96.0.0/16"), prefixes("10.0.0.0/8"), nil},
		{"exclude a /18 of a /16", prefixes("10.96.0.0/16"), prefixes("10.96.64.0/18"),
			prefixes("10.96.0.0/18", "10.96.128.0/17")},
		{"exclude one address", prefixes("10.0.0.0/30"), prefixes("10.0.0.1/32"),
			prefixes("10.0.0.0/32", "10.0.0.2/31")},
		{"exclude of another family", prefixes("10.96.0.0/16"), prefixes("::/0"), prefixes("10.96.0.0/16")},
		{"ipv6", prefixes("fd00::/64"), prefixes("fd00::/65"), prefixes("fd00:0:0:0:8000::/65")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RouteSet(tc.include, tc.exclude); !slices.Equal(got, tc.want) {
				t.Fatalf("RouteSet = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckConflicts(t *testing.T) {
	existing := []Route{
		{netip.MustParsePrefix("0.0.0.0/0"), "eth0"},
		{netip.MustParsePrefix("10.210.0.0/30"), "eth0"},
		{netip.MustParsePrefix("10.96.0.0/12"), "wg0"},
		{netip.MustParsePrefix("10.244.0.0/16"), "tunnel0"},
	}
	if err := CheckConflicts(prefixes("10.244.0.0/16", "172.16.0.0/16"), existing, "tunnel0"); err != nil {
		t.Fatalf("own and default routes counted as conflicts: %v", err)
	}
	err := CheckConflicts(prefixes("10.244.0.0/16", "10.96.0.0/16"), existing, "tunnel0")
	var c *ConflictError
	if !errors.As(err, &c) || c.Route.Device != "wg0" {
		t.Fatalf("CheckConflicts = %v, want a conflict with wg0", err)
	}
	for _, want := range []string{"10.96.0.0/16", "10.96.0.0/12 dev wg0", "--never-proxy 10.96.0.0/16"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := ParsePrefixes("--also-proxy", []string{"10.1.2.3/8", "192.168.0.7"})
	if err != nil || !slices.Equal(got, prefixes("10.0.0.0/8", "192.168.0.7/32")) {
		t.Fatalf("ParsePrefixes = %v, %v", got, err)
	}
	if _, err := ParsePrefixes("--never-proxy", []string{"nope"}); err == nil || !strings.Contains(err.Error(), "--never-proxy") {
		t.Fatalf("bad CIDR: %v", err)
	}
}
