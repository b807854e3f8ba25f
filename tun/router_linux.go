package tun

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Router brings the device up, gives it its address and keeps its routes
// equal to the set it is given.
type Router struct {
	log  *slog.Logger
	link netlink.Link

	mu     sync.Mutex // guards routes
	routes map[netip.Prefix]bool
}

// NewRouter takes charge of the device's addresses and routes.
func NewRouter(logger *slog.Logger, device string) (*Router, error) {
	link, err := netlink.LinkByName(device)
	if err != nil {
		return nil, fmt.Errorf("find device %s: %w", device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring %s up: %w", device, err)
	}
	return &Router{log: logger.With("subsystem", "router"), link: link, routes: map[netip.Prefix]bool{}}, nil
}

// AddAddress gives the device an address (the DNS resolver's, say). One
// the machine's traffic may leave from (source) has global scope; otherwise
// host scope, so the kernel never picks it as the source of a connection
// into the device and the cluster sees the laptop's packets as before.
func (r *Router) AddAddress(p netip.Prefix, source bool) error {
	a := &netlink.Addr{IPNet: ipnet(p), Scope: unix.RT_SCOPE_HOST}
	if source {
		a.Scope = unix.RT_SCOPE_UNIVERSE
	}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once: nobody else on a TUN device claims it
	}
	err := netlink.AddrReplace(r.link, a)
	if err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, r.link.Attrs().Name, err)
	}
	return nil
}

// Set makes the device's routes exactly routes, adding and removing the
// difference, and logs the change in one line.
func (r *Router) Set(routes []netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[netip.Prefix]bool{}
	var added, removed []netip.Prefix
	var errs []error
	for _, p := range routes {
		want[p] = true
		if r.routes[p] {
			continue
		}
		if err := netlink.RouteReplace(r.route(p)); err != nil {
			errs = append(errs, fmt.Errorf("route %s to %s: %w", p, r.link.Attrs().Name, err))
			continue
		}
		r.routes[p] = true
		added = append(added, p)
	}
	for p := range r.routes {
		if want[p] {
			continue
		}
		if err := netlink.RouteDel(r.route(p)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", p, err))
			continue
		}
		delete(r.routes, p)
		removed = append(removed, p)
	}
	if len(added)+len(removed) > 0 {
		r.log.Info("routes changed", "device", r.link.Attrs().Name, "added", added, "removed", removed)
	}
	return errors.Join(errs...)
}

// Close removes the routes it added. (They would go with the device too.)
func (r *Router) Close() error { return r.Set(nil) }

func (r *Router) route(p netip.Prefix) *netlink.Route {
	return &netlink.Route{LinkIndex: r.link.Attrs().Index, Dst: ipnet(p), Scope: netlink.SCOPE_LINK}
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// SystemRoutes lists the main table's routes, for CheckConflicts.
func SystemRoutes() ([]Route, error) {
	var out []Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, rt := range routes {
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if family == netlink.FAMILY_V6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if rt.Dst != nil {
				a, _ := netip.AddrFromSlice(rt.Dst.IP)
				ones, _ := rt.Dst.Mask.Size()
				dst = netip.PrefixFrom(a.Unmap(), ones)
			}
			name := fmt.Sprint(rt.LinkIndex)
			if l, err := netlink.LinkByIndex(rt.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			out = append(out, Route{Dst: dst, Device: name})
		}
	}
	return out, nil
}
