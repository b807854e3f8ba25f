package tun

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// RouteSet computes what to route into the device: the cluster's subnets
// and --also-proxy ones, less --never-proxy ones (split into the largest
// prefixes that avoid them), without duplicates or prefixes inside others.
func RouteSet(include, exclude []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range include {
		out = append(out, subtract(p.Masked(), exclude)...)
	}
	return Normalize(out)
}

// subtract returns p less every prefix in ex.
func subtract(p netip.Prefix, ex []netip.Prefix) []netip.Prefix {
	for _, e := range ex {
		e = e.Masked()
		if !p.Overlaps(e) || e.Addr().Is4() != p.Addr().Is4() {
			continue
		}
		if e.Bits() <= p.Bits() { // e covers p
			return nil
		}
		// Split p in halves and keep subtracting: the half without e
		// survives whole.
		lo, hi := halves(p)
		return append(subtract(lo, ex), subtract(hi, ex)...)
	}
	return []netip.Prefix{p}
}

func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits).Masked()
	a := lo.Addr().AsSlice()
	byteIdx, bit := (bits-1)/8, 7-uint((bits-1)%8)
	a[byteIdx] |= 1 << bit
	hiAddr, _ := netip.AddrFromSlice(a)
	return lo, netip.PrefixFrom(hiAddr, bits)
}

// Normalize sorts prefixes, masks them and drops those inside others.
func Normalize(ps []netip.Prefix) []netip.Prefix {
	var masked []netip.Prefix
	for _, p := range ps {
		if p.IsValid() {
			masked = append(masked, p.Masked())
		}
	}
	slices.SortFunc(masked, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range masked {
		if len(out) > 0 {
			last := out[len(out)-1]
			if last.Bits() <= p.Bits() && last.Contains(p.Addr()) {
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// Route is an existing route of the machine, as far as conflicts go.
type Route struct {
	Dst    netip.Prefix
	Device string
}

func (r Route) String() string { return fmt.Sprintf("%s dev %s", r.Dst, r.Device) }

// ConflictError says which cluster subnet collides with which route.
type ConflictError struct {
	Subnet netip.Prefix
	Route  Route
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("cluster subnet %s overlaps the route %s, perhaps a VPN's: pass --never-proxy %s to leave that subnet to it",
		e.Subnet, e.Route, e.Subnet)
}

// CheckConflicts finds the first subnet that overlaps an existing route of
// another device. Default routes overlap everything and do not count.
func CheckConflicts(subnets []netip.Prefix, existing []Route, ownDevice string) error {
	for _, s := range subnets {
		for _, r := range existing {
			if r.Device == ownDevice || r.Dst.Bits() == 0 || !r.Dst.Overlaps(s) {
				continue
			}
			return &ConflictError{Subnet: s, Route: r}
		}
	}
	return nil
}

// ParsePrefixes parses CIDRs given on the command line, naming the flag in
// the error.
func ParsePrefixes(flag string, cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		c = strings.TrimSpace(c)
		p, err := netip.ParsePrefix(c)
		if err != nil {
			if a, aerr := netip.ParseAddr(c); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				return nil, fmt.Errorf("%s %q is not a CIDR such as 10.0.0.0/8", flag, c)
			}
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
