package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/wgpath"
)

// wireGuardPath runs the WireGuard path of each live session: a key made
// for the session, sent over its authenticated control stream, and a
// WireGuard device that carries new connections while the manager answers
// over UDP. Without it, or while it does not answer, every connection
// takes the port-forward.
type wireGuardPath struct {
	log      *slog.Logger
	split    *wgpath.Split
	off      bool   // connect --wireguard=false
	endpoint string // connect --wireguard-endpoint: instead of the manager's
	keepOut  func(...netip.Addr)

	mu     sync.Mutex // guards following
	client *wgpath.Client
	why    string // why there is no client
	since  time.Time
}

// retryOffer is how long a session waits to ask again for a WireGuard
// path the manager could not give (its load balancer had no address yet).
const retryOffer = 30 * time.Second

// run gives one session its WireGuard path until ctx ends with the session.
func (w *wireGuardPath) run(ctx context.Context, ctl managerpb.ManagerClient) {
	if w.off {
		w.set(nil, "the WireGuard path is turned off (connect --wireguard=false)")
		return
	}
	for {
		c, retry, err := w.start(ctx, ctl)
		if err != nil {
			w.set(nil, err.Error())
			w.log.Info("no WireGuard path: every connection takes the port-forward", "why", err)
			if !retry || !sleepCtx(ctx, retryOffer) {
				return
			}
			continue
		}
		w.set(c, "")
		c.Run(ctx) // until the session ends
		w.set(nil, "the session is reconnecting")
		return
	}
}

// start asks the manager for the session's place on the path and starts
// the device; retry says whether asking again later may help.
func (w *wireGuardPath) start(ctx context.Context, ctl managerpb.ManagerClient) (*wgpath.Client, bool, error) {
	priv, err := wgpath.NewPrivateKey()
	if err != nil {
		return nil, false, err
	}
	pub := priv.Public()
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := ctl.WireGuard(actx, &managerpb.WireGuardRequest{PublicKey: pub[:]})
	switch status.Code(err) {
	case codes.OK:
	case codes.Unimplemented:
		return nil, false, errors.New("the manager is older than the WireGuard path (tunnel install --upgrade)")
	case codes.PermissionDenied, codes.InvalidArgument:
		return nil, false, errors.New(status.Convert(err).Message())
	default:
		return nil, true, errors.New(status.Convert(err).Message())
	}
	offer, err := w.offer(actx, resp)
	if err != nil {
		return nil, false, err
	}
	addrs := make([]netip.Addr, len(offer.Endpoints))
	for i, ep := range offer.Endpoints {
		addrs[i] = ep.Addr()
	}
	w.keepOut(addrs...) // WireGuard's own packets must not enter the device
	c, err := w.split.Start(w.log, offer, priv)
	return c, false, err
}

// offer reads the manager's answer; --wireguard-endpoint replaces its
// endpoints. Names are resolved here, with the laptop's own resolver.
func (w *wireGuardPath) offer(ctx context.Context, resp *managerpb.WireGuardOffer) (wgpath.Offer, error) {
	var o wgpath.Offer
	var err error
	if o.ServerKey, err = wgpath.ParseKey(resp.GetPublicKey()); err != nil {
		return o, fmt.Errorf("the manager's WireGuard key: %w", err)
	}
	o.Addr4, _ = netip.ParseAddr(resp.GetAddress())
	o.Addr6, _ = netip.ParseAddr(resp.GetAddress6())
	o.Server4, _ = netip.ParseAddr(resp.GetServerAddress())
	eps := resp.GetEndpoints()
	if w.endpoint != "" {
		eps = []string{w.endpoint}
	}
	for _, ep := range eps {
		resolved, err := resolveEndpoint(ctx, ep)
		if err != nil {
			w.log.Warn("a WireGuard endpoint does not resolve", "endpoint", ep, "err", err)
			continue
		}
		o.Endpoints = append(o.Endpoints, resolved)
	}
	if len(o.Endpoints) == 0 {
		return o, fmt.Errorf("no WireGuard endpoint resolves: %v", eps)
	}
	return o, nil
}

func resolveEndpoint(ctx context.Context, hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := net.LookupPort("udp", port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %v", host, err)
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), uint16(p)), nil
}

func (w *wireGuardPath) set(c *wgpath.Client, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != c || w.why != why {
		w.since = time.Now()
	}
	w.client, w.why = c, why
}

// status says which path new connections take, and why.
func (w *wireGuardPath) status() *daemonpb.DataPath {
	w.mu.Lock()
	c, why, since := w.client, w.why, w.since
	w.mu.Unlock()
	p := &daemonpb.DataPath{Carrier: "port-forward", Why: why}
	if c != nil {
		st := c.Status()
		if st.Up {
			p.Carrier = "wireguard"
		}
		p.Why, p.Endpoint, p.WireguardFlows, since = st.Why, st.Endpoint.String(), uint64(st.Flows), st.Since
	}
	if !since.IsZero() {
		p.Since = since.UTC().Format(time.RFC3339)
	}
	return p
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
