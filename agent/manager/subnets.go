package manager

import (
	"net/netip"
	"slices"
)

// compact returns the fewest prefixes covering exactly what ps covers:
// prefixes inside others are dropped and sibling halves are merged, so a
// laptop installs one route for 10.244.0.0/23 rather than two /24s.
// Invalid prefixes are ignored; the result is sorted by address.
func compact(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.Masked())
		}
	}
	for {
		slices.SortFunc(out, byAddrThenBits)
		merged := false
		kept := out[:0]
		for _, p := range out {
			if n := len(kept); n > 0 {
				last := kept[n-1]
				switch {
				case last.Bits() <= p.Bits() && last.Contains(p.Addr()):
					continue // covered (or a duplicate)
				case siblings(last, p):
					kept[n-1] = netip.PrefixFrom(p.Addr(), p.Bits()-1).Masked()
					merged = true
					continue
				}
			}
			kept = append(kept, p)
		}
		out = kept
		if !merged {
			return out
		}
	}
}

func byAddrThenBits(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// siblings reports whether a and b are the two halves of one prefix.
func siblings(a, b netip.Prefix) bool {
	if a.Bits() != b.Bits() || a.Bits() == 0 || a == b || a.Addr().Is4() != b.Addr().Is4() {
		return false
	}
	pa := netip.PrefixFrom(a.Addr(), a.Bits()-1).Masked()
	pb := netip.PrefixFrom(b.Addr(), b.Bits()-1).Masked()
	return pa == pb
}

// Granularity of coverAddrs: each address falls in a wide block (a /16 for
// IPv4, a /48 for IPv6); a block whose addresses all share one narrow block
// (/24, /64) is reported as that narrow block.
const (
	wide4, narrow4 = 16, 24
	wide6, narrow6 = 48, 64
)

// coverAddrs guesses pod subnets from pod IPs when no node tells its
// podCIDRs (Calico, Cilium cluster-pool…): the smallest /16 blocks holding
// the IPs, each shrunk to a /24 when all of its IPs fit in one.
func coverAddrs(addrs []netip.Addr) []netip.Prefix {
	narrowOf := map[netip.Prefix]netip.Prefix{} // wide block → its one narrow block, or invalid if several
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		a = a.Unmap()
		wide, narrow := wide6, narrow6
		if a.Is4() {
			wide, narrow = wide4, narrow4
		}
		w := netip.PrefixFrom(a, wide).Masked()
		n := netip.PrefixFrom(a, narrow).Masked()
		if prev, seen := narrowOf[w]; !seen {
			narrowOf[w] = n
		} else if prev != n {
			narrowOf[w] = netip.Prefix{}
		}
	}
	out := make([]netip.Prefix, 0, len(narrowOf))
	for w, n := range narrowOf {
		if n.IsValid() {
			out = append(out, n)
		} else {
			out = append(out, w)
		}
	}
	return compact(out)
}
