package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ReverseZone is the smallest reverse-lookup zone (in-addr.arpa or
// ip6.arpa) that holds every address of p: whole octets for IPv4, whole
// nibbles for IPv6. A split-DNS resolver routes PTR queries for the cluster's
// addresses to us by it.
func ReverseZone(p netip.Prefix) string {
	p = p.Masked()
	a := p.Addr()
	var labels []string
	if a.Is4() {
		b := a.As4()
		for i := range p.Bits() / 8 {
			labels = append(labels, fmt.Sprint(b[i]))
		}
		slices.Reverse(labels)
		return strings.Join(append(labels, "in-addr.arpa"), ".")
	}
	b := a.As16()
	for i := range p.Bits() / 4 {
		n := b[i/2] >> 4
		if i%2 == 1 {
			n = b[i/2] & 0xf
		}
		labels = append(labels, fmt.Sprintf("%x", n))
	}
	slices.Reverse(labels)
	return strings.Join(append(labels, "ip6.arpa"), ".")
}
