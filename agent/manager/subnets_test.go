package manager

import (
	"net/netip"
	"slices"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

func addrs(ss ...string) []netip.Addr {
	var as []netip.Addr
	for _, s := range ss {
		as = append(as, netip.MustParseAddr(s))
	}
	return as
}

func TestCompact(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []netip.Prefix
		want []netip.Prefix
	}{
		{"empty", nil, []netip.Prefix{}},
		{"one", prefixes("10.244.0.0/24"), prefixes("10.244.0.0/24")},
		{"siblings merge", prefixes("10.244.1.0/24", "10.244.0.0/24"), prefixes("10.244.0.0/23")},
		{"merges cascade", prefixes("10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"), prefixes("10.244.0.0/22")},
		{"gap stays", prefixes("10.244.0.0/24", "10.244.2.0/24"), prefixes("10.244.0.0/24", "10.244.2.0/24")},
		{"not siblings", prefixes("10.244.1.0/24", "10.244.2.0/24"), prefixes("10.244.1.0/24", "10.244.2.0/24")},
		{"covered dropped", prefixes("10.244.3.0/24", "10.244.0.0/16"), prefixes("10.244.0.0/16")},
		{"duplicates", prefixes("10.96.0.0/12", "10.96.0.0/12"), prefixes("10.96.0.0/12")},
		{"unmasked", prefixes("10.96.0.1/12"), prefixes("10.96.0.0/12")},
		{"dual stack", prefixes("fd00:10:96::/112", "10.96.0.0/12"), prefixes("10.96.0.0/12", "fd00:10:96::/112")},
		{"v6 siblings", prefixes("fd00:10:244:1::/64", "fd00:10:244::/64"), prefixes("fd00:10:244::/63")},
		{"invalid ignored", []netip.Prefix{{}, netip.MustParsePrefix("10.0.0.0/8")}, prefixes("10.0.0.0/8")},
	} {
		if got := compact(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("%s: compact(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestCompactKeepsCoverage(t *testing.T) {
	in := prefixes("10.244.0.0/24", "10.244.1.0/24", "10.244.7.0/24", "10.245.0.0/16", "10.244.1.128/25", "fd00::/64")
	out := compact(in)
	for _, p := range in {
		if !slices.ContainsFunc(out, func(o netip.Prefix) bool { return o.Bits() <= p.Bits() && o.Contains(p.Addr()) }) {
			t.Errorf("%v lost in %v", p, out)
		}
	}
	for _, probe := range addrs("10.244.2.1", "10.246.0.1", "fd00:0:0:1::1") {
		if slices.ContainsFunc(out, func(o netip.Prefix) bool { return o.Contains(probe) }) {
			t.Errorf("%v covers %v, which no input covers", out, probe)
		}
	}
}

func TestCoverAddrs(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []netip.Addr
		want []netip.Prefix
	}{
		{"none", nil, []netip.Prefix{}},
		{"one /24", addrs("10.244.0.5", "10.244.0.9"), prefixes("10.244.0.0/24")},
		{"spread in a /16", addrs("10.244.0.5", "10.244.3.9"), prefixes("10.244.0.0/16")},
		{"two /16s, each narrow", addrs("10.244.0.5", "172.16.4.2"), prefixes("10.244.0.0/24", "172.16.4.0/24")},
		{"one narrow, one wide", addrs("10.244.0.5", "172.16.4.2", "172.16.9.2"), prefixes("10.244.0.0/24", "172.16.0.0/16")},
		{"mapped v4", addrs("::ffff:10.244.0.5"), prefixes("10.244.0.0/24")},
		{"v6 one /64", addrs("fd00:10:244:1::5", "fd00:10:244:1::9"), prefixes("fd00:10:244:1::/64")},
		{"v6 spread", addrs("fd00:10:244:1::5", "fd00:10:244:2::9"), prefixes("fd00:10:244::/48")},
		{"dual stack", addrs("10.244.0.5", "fd00:10:244:1::5"), prefixes("10.244.0.0/24", "fd00:10:244:1::/64")},
		{"invalid ignored", []netip.Addr{{}, netip.MustParseAddr("10.1.1.1")}, prefixes("10.1.1.0/24")},
	} {
		if got := coverAddrs(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("%s: coverAddrs(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}
