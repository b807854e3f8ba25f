package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"
)

// systemd-resolved's D-Bus names (org.freedesktop.resolve1(5)).
const (
	resolvedName   = "org.freedesktop.resolve1"
	resolvedPath   = "/org/freedesktop/resolve1"
	resolvedMethod = "org.freedesktop.resolve1.Manager."
)

// Resolved configures systemd-resolved over D-Bus: our resolver becomes the
// DNS server of our own link (the TUN device), with the cluster's names as
// that link's routing and search domains. resolved keeps asking its other
// servers for everything else, so split DNS needs no upstreams of ours, and
// nothing on disk changes: when the device goes (quit, or a crash), resolved
// forgets the link's settings by itself.
type Resolved struct {
	log    *slog.Logger
	device string

	mu   sync.Mutex // guards following
	conn *dbus.Conn
	set  bool
	link int32
}

// NewResolved connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS if set)
// for configuring device's link.
func NewResolved(logger *slog.Logger, device string) (*Resolved, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	return &Resolved{log: logger.With("subsystem", "dns"), device: device, conn: conn}, nil
}

// ResolvedOnBus says whether systemd-resolved owns its name on the system bus.
func ResolvedOnBus() bool {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return false
	}
	defer conn.Close()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil {
		return false
	}
	return has
}

// SupportsSplitDNS is true: routing domains send only the cluster's names to us.
func (r *Resolved) SupportsSplitDNS() bool { return true }

// GetBaseConfig names the servers resolved asks for everything else (its
// global ones and other links'), not ours: names outside the routing
// domains never reach our resolver, but a name under a namespace's domain
// that the cluster does not know ("jira.corp" with a namespace corp) must
// still be answered as without tunnel.
func (r *Resolved) GetBaseConfig() (OSConfig, error) {
	own := int32(-1)
	if ifc, err := net.InterfaceByName(r.device); err == nil {
		own = int32(ifc.Index)
	}
	v, err := r.conn.Object(resolvedName, resolvedPath).GetProperty("org.freedesktop.resolve1.Manager.DNS")
	if err != nil {
		r.log.Warn("systemd-resolved's DNS servers are unknown: names the cluster lacks under a namespace's domain fail", "err", err)
		return OSConfig{}, nil
	}
	var servers []struct {
		Link    int32
		Family  int32
		Address []byte
	}
	if err := dbus.Store([]any{v.Value()}, &servers); err != nil {
		return OSConfig{}, fmt.Errorf("read systemd-resolved's DNS servers: %w", err)
	}
	var cfg OSConfig
	for _, s := range servers {
		a, ok := netip.AddrFromSlice(s.Address)
		if !ok || s.Link == own || a.IsLoopback() {
			continue
		}
		cfg.Nameservers = append(cfg.Nameservers, a.Unmap())
	}
	return cfg, nil
}

// dnsAddress and linkDomain are the D-Bus structs of SetLinkDNS and
// SetLinkDomains: a(iay) and a(sb).
type dnsAddress struct {
	Family  int32
	Address []byte
}

type linkDomain struct {
	Domain      string
	RoutingOnly bool
}

// SetDNS makes cfg's nameservers the device's DNS servers, its search
// domains search (and routing) domains, and its match domains routing-only
// domains; the link never becomes resolved's default route. A zero cfg
// reverts the link.
func (r *Resolved) SetDNS(cfg OSConfig) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cfg.IsZero() {
		return r.revertLocked()
	}
	ifc, err := net.InterfaceByName(r.device)
	if err != nil {
		return fmt.Errorf("find link %s for systemd-resolved: %w", r.device, err)
	}
	link := int32(ifc.Index)
	var servers []dnsAddress
	for _, a := range cfg.Nameservers {
		family := int32(2) // AF_INET
		if a.Is6() {
			family = 10 // AF_INET6
		}
		servers = append(servers, dnsAddress{Family: family, Address: a.AsSlice()})
	}
	var domains []linkDomain
	seen := map[string]bool{}
	add := func(d string, routing bool) {
		d = strings.TrimSuffix(d, ".")
		if d != "" && !seen[d] {
			seen[d] = true
			domains = append(domains, linkDomain{Domain: d, RoutingOnly: routing})
		}
	}
	for _, d := range cfg.SearchDomains {
		add(d, false)
	}
	for _, d := range cfg.MatchDomains {
		add(d, true)
	}
	obj := r.conn.Object(resolvedName, resolvedPath)
	if err := obj.Call(resolvedMethod+"SetLinkDNS", 0, link, servers).Err; err != nil {
		return fmt.Errorf("systemd-resolved SetLinkDNS on %s: %w", r.device, err)
	}
	r.link, r.set = link, true
	if err := obj.Call(resolvedMethod+"SetLinkDomains", 0, link, domains).Err; err != nil {
		return fmt.Errorf("systemd-resolved SetLinkDomains on %s: %w", r.device, err)
	}
	// Only the routing domains come to us (resolved 240+; older ones
	// decide by domains alone).
	if err := obj.Call(resolvedMethod+"SetLinkDefaultRoute", 0, link, false).Err; err != nil && !isUnknownMethod(err) {
		return fmt.Errorf("systemd-resolved SetLinkDefaultRoute on %s: %w", r.device, err)
	}
	if err := obj.Call(resolvedMethod+"FlushCaches", 0).Err; err != nil && !isUnknownMethod(err) {
		r.log.Warn("systemd-resolved FlushCaches", "err", err)
	}
	r.log.Info("dns: systemd-resolved sends the cluster's names to us", "link", r.device, "servers", cfg.Nameservers,
		"search", cfg.SearchDomains, "routing", cfg.MatchDomains)
	return nil
}

func isUnknownMethod(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && de.Name == "org.freedesktop.DBus.Error.UnknownMethod"
}

func (r *Resolved) revertLocked() error {
	if !r.set {
		return nil
	}
	r.set = false
	err := r.conn.Object(resolvedName, resolvedPath).Call(resolvedMethod+"RevertLink", 0, r.link).Err
	var de dbus.Error
	if errors.As(err, &de) && strings.HasSuffix(de.Name, "NoSuchLink") {
		return nil // the device is gone already, and its settings with it
	}
	if err != nil {
		return fmt.Errorf("systemd-resolved RevertLink on %s: %w", r.device, err)
	}
	return nil
}

// Close reverts the link and leaves the bus.
func (r *Resolved) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.revertLocked()
	r.conn.Close()
	return err
}
