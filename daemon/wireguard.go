package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
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
	keyLog   string // Options.WireGuardKeyLog

	mu      sync.Mutex     // guards following
	client  *wgpath.Client // the connection's device, from the first session on
	serving bool           // a session serves the path now
	why     string         // why not
	since   time.Time
}

// retryOffer is how long a session waits to ask again for a WireGuard
// path the manager could not give (its load balancer had no address yet).
const retryOffer = 30 * time.Second

// run gives one session its WireGuard path until ctx ends with the
// session; the connections the manager opens over it go to handle.
func (w *wireGuardPath) run(ctx context.Context, ctl managerpb.ManagerClient, handle func(net.Conn)) {
	if w.off {
		w.set(false, "the WireGuard path is turned off (connect --wireguard=false)")
		return
	}
	for {
		offer, priv, retry, err := w.ask(ctx, ctl)
		if err == nil {
			err = w.serve(ctx, offer, priv, handle)
			if err == nil {
				w.set(false, "the session is reconnecting")
				return
			}
		}
		w.set(false, err.Error())
		w.log.Info("no WireGuard path: every connection takes the port-forward", "why", err)
		if !retry || !sleepCtx(ctx, retryOffer) {
			return
		}
	}
}

// ask sends the manager the session's new key and reads its offer; retry
// says whether asking again later may help.
func (w *wireGuardPath) ask(ctx context.Context, ctl managerpb.ManagerClient) (wgpath.Offer, wgpath.Key, bool, error) {
	priv, err := wgpath.NewPrivateKey()
	if err != nil {
		return wgpath.Offer{}, priv, false, err
	}
	pub := priv.Public()
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := ctl.WireGuard(actx, &managerpb.WireGuardRequest{PublicKey: pub[:]})
	switch status.Code(err) {
	case codes.OK:
	case codes.Unimplemented:
		return wgpath.Offer{}, priv, false, errors.New("the manager is older than the WireGuard path (tunnel install --upgrade)")
	case codes.PermissionDenied, codes.InvalidArgument:
		return wgpath.Offer{}, priv, false, errors.New(status.Convert(err).Message())
	default:
		return wgpath.Offer{}, priv, true, errors.New(status.Convert(err).Message())
	}
	offer, err := w.offer(actx, resp)
	return offer, priv, false, err
}

// serve runs the session's part of the path on the connection's device,
// made at the first session, until ctx ends.
func (w *wireGuardPath) serve(ctx context.Context, offer wgpath.Offer, priv wgpath.Key, handle func(net.Conn)) error {
	w.mu.Lock()
	c := w.client
	w.mu.Unlock()
	if c == nil {
		var err error
		if c, err = w.split.NewClient(w.log); err != nil {
			return err
		}
		w.mu.Lock()
		w.client = c
		w.mu.Unlock()
	}
	addrs := make([]netip.Addr, len(offer.Endpoints))
	for i, ep := range offer.Endpoints {
		addrs[i] = ep.Addr()
	}
	w.keepOut(addrs...) // WireGuard's own packets must not enter the device
	if w.keyLog != "" {
		if err := appendKeyLog(w.keyLog, priv, offer); err != nil {
			w.log.Warn("write the WireGuard key log", "err", err)
		}
	}
	w.set(true, "")
	return c.Run(ctx, offer, priv, handle)
}

// close ends the connection's device.
func (w *wireGuardPath) close() {
	w.mu.Lock()
	c := w.client
	w.client = nil
	w.mu.Unlock()
	if c != nil {
		c.Close()
	}
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

// appendKeyLog adds a session's keys to the key log, as Wireshark's
// WireGuard dissector reads it, with the session's tunnel address and the
// manager's endpoints as a comment.
func appendKeyLog(path string, priv wgpath.Key, o wgpath.Offer) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "# session address %s, manager %s at %v\nLOCAL_STATIC_PRIVATE_KEY = %s\nREMOTE_STATIC_PUBLIC_KEY = %s\n",
		o.Addr4, o.Server4, o.Endpoints, base64.StdEncoding.EncodeToString(priv[:]), base64.StdEncoding.EncodeToString(o.ServerKey[:]))
	return err
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

// set says whether a session serves the path now, or why not.
func (w *wireGuardPath) set(serving bool, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.serving != serving || w.why != why {
		w.since = time.Now()
	}
	w.serving, w.why = serving, why
}

// status says which path new connections take, and why.
func (w *wireGuardPath) status() *daemonpb.DataPath {
	w.mu.Lock()
	c, serving, why, since := w.client, w.serving, w.why, w.since
	w.mu.Unlock()
	p := &daemonpb.DataPath{Carrier: "port-forward", Why: why}
	if c != nil && serving {
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

// dialErrors are the dials the manager failed over the path, and of them
// those it refused.
func (w *wireGuardPath) dialErrors() (failed, refused uint64) {
	if w == nil {
		return 0, 0
	}
	w.mu.Lock()
	c := w.client
	w.mu.Unlock()
	if c == nil {
		return 0, 0
	}
	return c.DialErrors()
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
