package dns

import (
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// The routing rules, on lower-case fully qualified names. A pod resolves short
// names through its search path ("<ns>.svc.<domain> svc.<domain> <domain>");
// these rules give the laptop the same results without a search path.

// isClusterName reports whether name goes to the cluster unchanged: it is in
// the cluster domain or an included suffix, or it is the reverse name of an
// address in the cluster's subnets.
func (r *Resolver) isClusterName(name string) bool {
	if inDomain(name, r.domain) {
		return true
	}
	for _, s := range r.include {
		if inDomain(name, s) {
			return true
		}
	}
	addr, ok := reverseAddr(name)
	if !ok {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, p := range r.subnets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// expand returns the cluster name a short name stands for:
//
//	<a>                   → <a>.<Namespace>.svc.<domain>
//	_<p>._<proto>.<a>     → _<p>._<proto>.<a>.<Namespace>.svc.<domain>
//	<a>.<ns>              → <a>.<ns>.svc.<domain>, when ns is a namespace
//	                        and not a top-level domain (IsPublicLabel)
//	_<p>._<proto>.<a>.<ns> and <host>.<a>.<ns> likewise
//	<...>.svc, <...>.pod  → <...>.svc.<domain>, <...>.pod.<domain>
//
// Reverse names never expand.
func (r *Resolver) expand(name string) (string, bool) {
	labels := mdns.SplitDomainName(name)
	n := len(labels)
	if n == 0 || labels[n-1] == "arpa" {
		return "", false
	}
	var long string
	switch last := labels[n-1]; {
	case n == 1 || (n == 3 && isServiceLabel(labels[0]) && isServiceLabel(labels[1])):
		if r.namespace == "" {
			return "", false
		}
		long = name + r.namespace + ".svc." + r.domain
	case n >= 3 && (last == "svc" || last == "pod"):
		long = name + r.domain
	case n <= 4 && r.isNamespace(last):
		long = name + "svc." + r.domain
	default:
		return "", false
	}
	if _, ok := mdns.IsDomainName(long); !ok {
		return "", false // too long once expanded
	}
	return long, true
}

// isNamespace says whether label is a namespace that names expand into;
// SetNamespaces leaves out those named like top-level domains.
func (r *Resolver) isNamespace(label string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namespaces[label]
}

// isServiceLabel reports whether l is an SRV service or protocol label (_http).
func isServiceLabel(l string) bool {
	return len(l) > 1 && l[0] == '_'
}

// inDomain reports whether name is domain or below it; both fully qualified.
func inDomain(name, domain string) bool {
	return name == domain || strings.HasSuffix(name, "."+domain)
}

// reverseAddr parses a full reverse-lookup name (4.3.2.1.in-addr.arpa. or 32
// nibbles under ip6.arpa.) into its address.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 10, 8)
			if err != nil || (len(p) > 1 && p[0] == '0') {
				return netip.Addr{}, false
			}
			b[3-i] = byte(v)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		parts := strings.Split(rest, ".")
		if len(parts) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 16, 4)
			if err != nil || len(p) != 1 {
				return netip.Addr{}, false
			}
			// parts[0] is the lowest nibble of the last byte.
			j := 31 - i
			b[j/2] |= byte(v) << (4 * (1 - j%2))
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}
