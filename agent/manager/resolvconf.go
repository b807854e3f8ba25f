package manager

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// resolver is what the pod's resolv.conf tells: the cluster's DNS servers
// and its domain.
type resolver struct {
	servers []netip.AddrPort // where queries go
	domain  string           // e.g. "cluster.local"; "" if the search list does not tell
}

// readResolvConf parses a resolv.conf as the kubelet writes it for a pod:
//
//	search tunnel-system.svc.cluster.local svc.cluster.local cluster.local
//	nameserver 10.96.0.10
//
// A nameserver may carry a port ("127.0.0.1:5353", "[::1]:5353"), which
// the C library does not accept but tests need.
func readResolvConf(path string) (resolver, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return resolver{}, fmt.Errorf("read DNS configuration %s: %w", path, err)
	}
	port, err := strconv.ParseUint(cc.Port, 10, 16)
	if err != nil {
		return resolver{}, fmt.Errorf("read DNS configuration %s: port %q: %w", path, cc.Port, err)
	}
	var r resolver
	for _, s := range cc.Servers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return resolver{}, fmt.Errorf("read DNS configuration %s: nameserver %q is not an IP address", path, s)
			}
			ap = netip.AddrPortFrom(a.Unmap(), uint16(port))
		}
		r.servers = append(r.servers, ap)
	}
	if len(r.servers) == 0 {
		return resolver{}, fmt.Errorf("read DNS configuration %s: no nameserver line", path)
	}
	for _, s := range cc.Search {
		if d, ok := strings.CutPrefix(strings.TrimSuffix(s, "."), "svc."); ok && d != "" {
			r.domain = d
			break
		}
	}
	return r, nil
}
