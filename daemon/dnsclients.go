package daemon

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// localRefresh is how often, at most, a query from an address not known to
// be the machine's looks at the machine's addresses again: a new address
// (a DHCP lease, a VPN) is seen at its first query, and a neighbour
// sending from many addresses costs at most one look a second.
const localRefresh = time.Second

// dnsClients decides whose queries the laptop's resolver answers. The
// resolver's address is local to the machine (a kernel socket answers in a
// few microseconds where the device and the userspace stack took a
// fraction of a millisecond), so anyone who routes that address to the
// laptop reaches it. The machine's own processes are answered; the
// cluster's addresses never are (a pod must not use the laptop's
// resolvers); anyone else (a container, a VM, a neighbour) only while the
// machine forwards packets, as the kernel forwarded theirs into the device
// when the resolver answered there.
type dnsClients struct {
	addrs    func() ([]netip.Addr, error) // the machine's addresses
	forwards func(v6 bool) bool
	cluster  func() []netip.Prefix // the subnets routed into the device
	now      func() time.Time

	mu      sync.Mutex // guards following
	local   map[netip.Addr]bool
	checked time.Time
}

func newDNSClients(cluster func() []netip.Prefix) *dnsClients {
	return &dnsClients{addrs: machineAddrs, forwards: forwarding, cluster: cluster, now: time.Now}
}

// allow says whether a query from a is answered.
func (d *dnsClients) allow(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() {
		return false
	}
	if a.IsLoopback() || d.isLocal(a) {
		return true
	}
	for _, p := range d.cluster() {
		if p.Contains(a) {
			return false
		}
	}
	return d.forwards(a.Is6())
}

// isLocal says whether a is one of the machine's addresses. The kernel
// drops a packet from outside that claims one (a martian), so a source
// that is local was sent by this machine.
func (d *dnsClients) isLocal(a netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.local[a] {
		return true
	}
	if now := d.now(); d.local == nil || now.Sub(d.checked) >= localRefresh {
		d.checked = now
		addrs, err := d.addrs()
		if err != nil {
			return false
		}
		d.local = make(map[netip.Addr]bool, len(addrs))
		for _, l := range addrs {
			d.local[l.Unmap()] = true
		}
	}
	return d.local[a]
}

func machineAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ia := range ifAddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// forwarding says whether the machine forwards IPv4 (or IPv6) packets; a
// machine that does not say so does not.
func forwarding(v6 bool) bool {
	path := "/proc/sys/net/ipv4/ip_forward"
	if v6 {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
