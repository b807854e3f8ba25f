package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	wgtun "golang.zx2c4.com/wireguard/tun"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/connrotation"

	"tunnel.dev/tunnel/dns"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/tun"
	"tunnel.dev/tunnel/tun/netstack"
	"tunnel.dev/tunnel/wgpath"
	"tunnel.dev/tunnel/workload"
)

// Options are the daemon's settings for every connection.
type Options struct {
	Device     string         // TUN device name
	DNSAddr    netip.AddrPort // where the resolver answers, an address the device gets
	ResolvConf string         // the resolv.conf to point at the resolver
	RunDir     string
	DNSObserve func(via string, took time.Duration, err error) // DNS latency, for metrics
	// WireGuardKeyLog, when set, is a file (root's, 0600) the daemon adds
	// each session's WireGuard keys to, in Wireshark's format, for
	// debugging with a capture. The daemon sets it from
	// TUNNEL_WIREGUARD_KEYLOG=1 in its own environment, which only root
	// controls (sudo does not pass it on).
	WireGuardKeyLog string
}

// connection is the laptop joined to one cluster: the session, the TUN
// device with its routes, the userspace stack, and the DNS setup. Each part
// is undone in reverse order by close.
type connection struct {
	log     *slog.Logger
	req     *daemonpb.ConnectRequest
	server  string
	context string
	since   time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	sess     *session
	dev      tun.Device
	split    *wgpath.Split // the device as the stack sees it, less the WireGuard path's flows
	wgPath   *wireGuardPath
	router   *tun.Router
	stack    *netstack.Stack
	resolver *dns.Resolver
	osDNS    dns.OSConfigurator
	dnsAddr  netip.Addr // the resolver's address, the device's own
	dnsState *daemonpb.DNSStatus

	also, never []netip.Prefix

	mu     sync.Mutex     // guards following
	pinned []netip.Prefix // never routed into the device: the API server's and the upstream resolvers' addresses
	routes []netip.Prefix
	up     bool                   // open finished: changes apply at once
	latest *managerpb.ClusterInfo // a change that came while opening
	info   *managerpb.ClusterInfo // the cluster's shape as last told
}

// open brings a connection up, or leaves nothing behind and says why.
func open(ctx context.Context, logger *slog.Logger, opt Options, caller Caller, req *daemonpb.ConnectRequest) (_ *connection, err error) {
	c := &connection{log: logger, req: req, since: time.Now(), dnsAddr: opt.DNSAddr.Addr()}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if c.also, err = tun.ParsePrefixes("--also-proxy", req.AlsoProxy); err != nil {
		return nil, err
	}
	if c.never, err = tun.ParsePrefixes("--never-proxy", req.NeverProxy); err != nil {
		return nil, err
	}
	if ep := req.WireguardEndpoint; ep != "" {
		if _, port, err := net.SplitHostPort(ep); err != nil || port == "" {
			return nil, fmt.Errorf("--wireguard-endpoint %q: want HOST:PORT, the manager's WireGuard address as this laptop reaches it", ep)
		}
	}
	rc, kctx, err := restConfig(req.Kubeconfig, req.Context, caller)
	if err != nil {
		return nil, err
	}
	c.server, c.context = rc.Host, kctx
	c.pin(apiServerAddrs(ctx, rc.Host)...)
	// The API server's connections are ours to close: after the laptop's
	// network changes, one bound to the old address would hold every
	// request (the pod list of a reconnect among them) until HTTP/2's
	// health check gives up, 45 s later.
	conns := connrotation.NewDialer((&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext)
	rc.Dial = conns.DialContext
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	wc, err := workload.ForConfig(rc, cs)
	if err != nil {
		return nil, err
	}
	c.sess = newSession(logger, rc, wc, req.ManagerNamespace, c.clusterChanged)
	c.sess.pathDied = conns.CloseAll
	c.wgPath = &wireGuardPath{log: logger, off: req.NoWireguard, endpoint: req.WireguardEndpoint, keepOut: c.keepOut,
		keyLog: opt.WireGuardKeyLog}
	c.sess.onSession = c.wgPath.run
	info, err := c.sess.connect(ctx)
	if err != nil {
		return nil, err
	}

	routes := c.routeSet(info)
	existing, err := tun.SystemRoutes()
	if err != nil {
		return nil, err
	}
	if err := tun.CheckConflicts(routes, existing, opt.Device); err != nil {
		return nil, err
	}
	if c.dev, err = tun.Create(opt.Device, tun.DefaultMTU); err != nil {
		return nil, err
	}
	go func(events <-chan wgtun.Event) { // the device blocks if nobody reads them
		for range events {
		}
	}(c.dev.Events())
	if c.router, err = tun.NewRouter(logger, opt.Device); err != nil {
		return nil, err
	}
	c.split = wgpath.NewSplit(logger, c.dev, nil)
	c.wgPath.split = c.split
	if c.stack, err = netstack.New(logger, c.split.Stack(), c.sess, netstack.Config{MTU: tun.DefaultMTU}); err != nil {
		return nil, err
	}
	if err := c.setRoutes(routes); err != nil {
		return nil, err
	}
	if err := c.startDNS(runCtx, opt, info); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.up = true
	c.info = info
	latest := c.latest
	c.mu.Unlock()
	if latest != nil {
		c.clusterChanged(latest)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.sess.run(runCtx)
	}()
	return c, nil
}

// routeSet is what goes into the device for the cluster: its subnets and
// --also-proxy, less --never-proxy.
//
// What the manager sends is checked every time, not only at connect: a
// prefix wider than /8 (/32 for IPv6) is refused, and the API server's and
// the upstream resolvers' addresses are never routed, so a manager cannot
// take the laptop's traffic to the Internet, or cut its own session.
func (c *connection) routeSet(info *managerpb.ClusterInfo) []netip.Prefix {
	var include []netip.Prefix
	for _, s := range slices.Concat(info.ServiceSubnets, info.PodSubnets) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		if tooWide(p) {
			c.log.Warn("refusing a cluster subnet wider than /8 (/32 for IPv6)", "subnet", p)
			continue
		}
		include = append(include, p)
	}
	c.mu.Lock()
	exclude := slices.Concat(c.never, c.pinned)
	c.mu.Unlock()
	return tun.RouteSet(append(include, c.also...), exclude)
}

// tooWide says whether a cluster's subnet is too wide to be one.
func tooWide(p netip.Prefix) bool {
	if p.Addr().Is4() {
		return p.Bits() < 8
	}
	return p.Bits() < 32
}

// pin keeps addrs out of the device's routes from now on.
func (c *connection) pin(addrs ...netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range addrs {
		p := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		if !slices.Contains(c.pinned, p) {
			c.pinned = append(c.pinned, p)
		}
	}
}

// apiServerAddrs resolves the API server's host, before any route or DNS
// setting of ours exists.
func apiServerAddrs(ctx context.Context, server string) []netip.Addr {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return nil
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		return []netip.Addr{a}
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", u.Hostname())
	if err != nil {
		return nil
	}
	return addrs
}

// traffic counts the connections and bytes of both paths: the WireGuard
// path's never reach the stack.
func (c *connection) traffic() netstack.Stats {
	st := c.stack.Stats()
	wg := c.split.Stats()
	st.TCPActive, st.TCPTotal = st.TCPActive+wg.TCPActive, st.TCPTotal+wg.TCPTotal
	st.UDPActive, st.UDPTotal = st.UDPActive+wg.UDPActive, st.UDPTotal+wg.UDPTotal
	st.BytesSent, st.BytesReceived = st.BytesSent+wg.BytesSent, st.BytesReceived+wg.BytesRecvd
	failed, refused := c.wgPath.dialErrors()
	st.DialErrors, st.DialsRefused = st.DialErrors+failed, st.DialsRefused+refused
	return st
}

// keepOut keeps addrs out of the device's routes from now on, and applies
// that at once: the WireGuard path's endpoints, whose packets must leave
// by the laptop's own network.
func (c *connection) keepOut(addrs ...netip.Addr) {
	c.pin(addrs...)
	c.mu.Lock()
	info := c.info
	c.mu.Unlock()
	if info != nil {
		c.clusterChanged(info)
	}
}

func (c *connection) routesNow() []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.routes
}

func (c *connection) setRoutes(routes []netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.router.Set(routes); err != nil {
		return err
	}
	c.routes = routes
	return nil
}

// clusterChanged follows the cluster: new nodes' subnets get routes, new
// namespaces resolve.
func (c *connection) clusterChanged(info *managerpb.ClusterInfo) {
	routes := c.routeSet(info)
	c.mu.Lock()
	if !c.up {
		c.latest = info
		c.mu.Unlock()
		return
	}
	c.info = info
	same := slices.Equal(routes, c.routes)
	c.mu.Unlock()
	if !same {
		if err := c.setRoutes(routes); err != nil {
			c.log.Error("update routes", "err", err)
		}
	}
	c.resolver.SetNamespaces(info.Namespaces)
	c.resolver.SetClusterSubnets(routes)
	if c.osDNS != nil && c.osDNS.SupportsSplitDNS() { // a new namespace is a new routing domain
		if err := c.osDNS.SetDNS(c.splitConfig(info)); err != nil {
			c.log.Error("update DNS routing domains", "err", err)
		}
	}
}

// splitConfig is what a split-DNS resolver (systemd-resolved) is told: our
// address for the cluster's domain, each namespace (for <svc>.<ns>), the
// --dns-include suffixes and the reverse zones of the routed subnets; the
// connected namespace's search path.
func (c *connection) splitConfig(info *managerpb.ClusterInfo) dns.OSConfig {
	d, ns := info.ClusterDomain, c.req.Namespace
	match := []string{d}
	for _, n := range info.Namespaces {
		// A namespace named like a top-level domain would route every
		// public name under it to us: <svc>.<ns> is not offered for it.
		if !dns.IsPublicLabel(n) {
			match = append(match, n)
		}
	}
	match = append(match, c.req.DnsInclude...)
	for _, p := range c.routeSet(info) {
		match = append(match, dns.ReverseZone(p))
	}
	return dns.OSConfig{
		Nameservers:   []netip.Addr{c.dnsAddr},
		SearchDomains: []string{ns + ".svc." + d, "svc." + d, d},
		MatchDomains:  match,
	}
}

// startDNS serves the resolver at opt.DNSAddr and points
// the machine's resolv.conf at it; names outside the cluster go to the
// resolvers resolv.conf named before.
func (c *connection) startDNS(ctx context.Context, opt Options, info *managerpb.ClusterInfo) error {
	osDNS, err := dns.NewOSConfigurator(c.log, opt.ResolvConf, daemonpb.ResolvBackup(opt.RunDir), opt.Device)
	if err != nil {
		return err
	}
	c.osDNS = osDNS
	split := osDNS.SupportsSplitDNS()
	base, err := osDNS.GetBaseConfig()
	if err != nil {
		return err
	}
	// Under split DNS only the routing domains come to us; the upstreams
	// answer those names the cluster lacks (wiki.corp, namespace corp).
	upstreams := base.Upstreams()
	for _, u := range upstreams {
		c.pin(u.Addr())
	}
	if routes := c.routeSet(info); !slices.Equal(routes, c.routesNow()) {
		if err := c.setRoutes(routes); err != nil {
			return err
		}
	}
	ns := c.req.Namespace
	c.resolver = dns.NewResolver(c.log, exchanger{c.sess}, dns.Config{
		ClusterDomain: info.ClusterDomain, Namespace: ns, Include: c.req.DnsInclude, Upstreams: upstreams,
		Observe: opt.DNSObserve, Client: newDNSClients(c.routesNow).allow,
	})
	c.resolver.SetNamespaces(info.Namespaces)
	c.resolver.SetClusterSubnets(c.routeSet(info))
	// The resolver answers on a kernel socket at an address of the device:
	// a query costs the kernel's loopback, not the device, the userspace
	// stack and back. systemd-resolved uses a link's servers only while
	// the link has an address of global scope, and this is it; the kernel
	// then sends the device's traffic from it, which the cluster side
	// takes as it takes any source.
	if err := c.router.AddAddress(netip.PrefixFrom(c.dnsAddr, c.dnsAddr.BitLen()), split); err != nil {
		return fmt.Errorf("give %s the resolver's address %s: %w", opt.Device, c.dnsAddr, err)
	}
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", opt.DNSAddr.String())
	if err != nil {
		return fmt.Errorf("serve DNS at %s: %w", opt.DNSAddr, err)
	}
	ln, err := lc.Listen(ctx, "tcp", opt.DNSAddr.String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("serve DNS at %s: %w", opt.DNSAddr, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.resolver.Serve(ctx, pc, ln); err != nil && ctx.Err() == nil {
			c.log.Error("DNS server stopped", "err", err)
		}
	}()
	cfg := c.splitConfig(info)
	c.dnsState = &daemonpb.DNSStatus{Mode: "systemd-resolved", Nameserver: c.dnsAddr.String()}
	if !split {
		cfg = dns.OSConfig{Nameservers: []netip.Addr{c.dnsAddr}, SearchDomains: append(cfg.SearchDomains, base.SearchDomains...)}
		c.dnsState.Mode = "resolv.conf"
	}
	if err := osDNS.SetDNS(cfg); err != nil {
		return err
	}
	c.dnsState.Search = cfg.SearchDomains
	for _, u := range upstreams {
		c.dnsState.Upstreams = append(c.dnsState.Upstreams, u.String())
	}
	if split {
		c.dnsState.Upstreams = []string{"systemd-resolved's own servers"}
	}
	return nil
}

// close undoes open in reverse: DNS first, so no name points at a resolver
// that is gone, then the routes, the stack, the device and the session.
func (c *connection) close() error {
	var errs []error
	if c.sess != nil && len(c.sess.icpt.list()) > 0 { // the app gets its traffic back at once, not at the session's timeout
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, ctl, err := c.sess.current(ctx); err == nil {
			c.sess.icpt.removeAll(ctx, ctl)
		}
		cancel()
	}
	if c.osDNS != nil {
		if err := c.osDNS.Close(); err != nil {
			errs = append(errs, fmt.Errorf("restore DNS: %w", err))
		}
	}
	if c.resolver != nil {
		c.resolver.Close()
	}
	if c.cancel != nil {
		c.cancel()
	}
	if c.router != nil {
		if err := c.router.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.stack != nil {
		c.stack.Close()
	}
	if c.dev != nil {
		c.dev.Close()
	}
	if c.sess != nil {
		c.sess.close()
	}
	c.wg.Wait()
	if c.wgPath != nil {
		c.wgPath.close() // once the session's part of it has ended
	}
	return errors.Join(errs...)
}

// exchanger sends cluster DNS queries to the manager.
type exchanger struct{ s *session }

func (e exchanger) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	_, ctl, err := e.s.current(ctx)
	if err != nil {
		return nil, err
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	resp, err := ctl.Resolve(ctx, &managerpb.ResolveRequest{Query: wire})
	if err != nil {
		return nil, err
	}
	m := new(mdns.Msg)
	if err := m.Unpack(resp.Answer); err != nil {
		return nil, fmt.Errorf("unpack the cluster's answer: %w", err)
	}
	return m, nil
}
