package wgpath

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// Offer is what the manager gives a session for its WireGuard path.
type Offer struct {
	ServerKey    Key
	Endpoints    []netip.AddrPort // where the manager's UDP port is reachable, best first
	Addr4, Addr6 netip.Addr       // the session's addresses inside the tunnel
	Server4      netip.Addr       // the manager's, which answers probes
}

// ProbePort is the manager's UDP echo port on its tunnel address: the
// laptop's probes there tell whether the path carries packets.
const ProbePort = 7

// Timing of the path's decisions.
const (
	probeEvery   = 150 * time.Millisecond // while deciding
	decideBudget = 2 * time.Second        // at connect, over all endpoints
	deadAfter    = 3 * time.Second        // without an answer: down
	retryEvery   = 5 * time.Second        // while down, another try
	maxEndpoints = 4
)

// Status says which path carries new connections and why.
type Status struct {
	Up       bool           // WireGuard carries new connections
	Endpoint netip.AddrPort // the manager's address it uses (or last tried)
	Why      string         // one sentence: why it is up, or why not
	Since    time.Time
	Flows    int // connections on it now
}

// Client is a connection's WireGuard path on the laptop: one userspace
// WireGuard device for the connection's life, given a key and the
// manager's offer by each session in turn (Run). Reusing the device keeps
// its buffers (a few MB) from being made anew at every reconnect.
type Client struct {
	log   *slog.Logger
	split *Split
	end   *wgEnd
	dev   *device.Device
	sess  atomic.Pointer[clientSession] // the session Run serves; nil between
	seq   atomic.Uint32

	lastReply atomic.Int64 // unix nanoseconds of the last probe answer
	loss      lossMeter
	mu        sync.Mutex // guards following
	status    Status
	// Dial errors the manager reported for the path, of the sessions
	// before this one and of this one so far.
	pastFailed, pastRefused uint64
	curFailed, curRefused   uint64
}

// probeLen is a probe's payload: the session's token, a number and
// flags. The answer adds the session's failed and refused dials, 8 bytes
// each.
const probeLen = 13

// probeTakesIntercepts, in a probe's flags, tells the manager that the
// laptop takes intercepted connections over the path now: it serves them,
// and the link is not lossy.
const probeTakesIntercepts = 1

// DialErrors are the dials the manager failed over the path since the
// client started, and of them those its rules refused.
func (c *Client) DialErrors() (failed, refused uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pastFailed + c.curFailed, c.pastRefused + c.curRefused
}

// clientSession is what one session gave the path.
type clientSession struct {
	offer   Offer
	token   [8]byte // in every probe, so only answers to ours count
	inbound bool    // the session serves the manager's connections
}

// NewClient brings up the device, attached to the split, carrying nothing
// until a session's Run.
func (s *Split) NewClient(log *slog.Logger) (*Client, error) {
	c := &Client{log: log.With("subsystem", "wireguard"), split: s}
	c.end = newWGEnd(s, MTU, c.isReply)
	in, err := newInbound(c.log.With("path", "inbound"), c.end)
	if err != nil {
		return nil, err
	}
	c.end.in = in
	c.dev = device.NewDevice(c.end, conn.NewDefaultBind(), wgLogger(c.log))
	if err := c.forget(); err != nil {
		c.close()
		return nil, err
	}
	if err := c.dev.IpcSet("listen_port=0\n"); err != nil {
		c.close()
		return nil, fmt.Errorf("configure WireGuard: %w", err)
	}
	if err := c.dev.Up(); err != nil {
		c.close()
		return nil, fmt.Errorf("start WireGuard: %w", err)
	}
	s.attach(c.end)
	return c, nil
}

// forget drops the peer and replaces the key with one nobody knows, so
// nothing of an ended session stays in the device.
func (c *Client) forget() error {
	k, err := NewPrivateKey()
	if err != nil {
		return err
	}
	if err := c.dev.IpcSet("private_key=" + k.hex() + "\nreplace_peers=true\n"); err != nil {
		return fmt.Errorf("configure WireGuard: %w", err)
	}
	return nil
}

// Close ends the path for good: its connections are reset, new ones take
// the port-forward path.
func (c *Client) Close() {
	c.split.close(c.end)
	c.close()
}

func (c *Client) close() {
	c.dev.Close() // closes c.end, which detaches it
	c.end.in.close()
}

// Status is the path's state now.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.status
	st.Flows = c.split.Flows()
	return st
}

func (c *Client) setStatus(up bool, ep netip.AddrPort, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status.Up != up || c.status.Why != why || c.status.Endpoint != ep {
		c.status = Status{Up: up, Endpoint: ep, Why: why, Since: time.Now()}
	}
}

// Run serves one session until ctx ends: it takes the session's key and
// the manager's offer, tries the endpoints in turn within 2 s, opens the
// path at the first answer, keeps probing once a second, closes the path
// after 3 s without an answer and tries again every 5 s. When ctx ends the
// path closes (its connections reset) and the device forgets the session.
// The connections the manager opens to the laptop over the path go to
// handle (nil: refused), which owns them.
func (c *Client) Run(ctx context.Context, offer Offer, priv Key, handle func(net.Conn)) error {
	if !offer.Addr4.Is4() || !offer.Server4.Is4() || len(offer.Endpoints) == 0 {
		return fmt.Errorf("the manager's WireGuard offer is incomplete: address %v, server %v, %d endpoints",
			offer.Addr4, offer.Server4, len(offer.Endpoints))
	}
	if len(offer.Endpoints) > maxEndpoints {
		offer.Endpoints = offer.Endpoints[:maxEndpoints]
	}
	sess := &clientSession{offer: offer, inbound: handle != nil}
	if _, err := rand.Read(sess.token[:]); err != nil {
		return err
	}
	if err := c.dev.IpcSet("private_key=" + priv.hex() + "\n"); err != nil {
		return fmt.Errorf("configure WireGuard: %w", err)
	}
	if handle != nil {
		// A laptop that cannot listen does not offer to take intercepts:
		// the manager would try each and wait for its dial to fail.
		if ln, err := c.end.in.listen(offer.Addr4); err != nil {
			c.log.Warn("the manager cannot open connections over WireGuard; intercepts take the session", "err", err)
			sess.inbound = false
		} else {
			// Run returns once the port is closed again: the next
			// session may get the same address.
			served := make(chan struct{})
			go func() { c.end.in.serve(ctx, ln, handle); close(served) }()
			defer func() { <-served }()
		}
	}
	c.sess.Store(sess)
	c.end.setAddrs(offer.Addr4, offer.Addr6)
	defer func() {
		c.split.close(c.end)
		c.end.setAddrs(netip.Addr{}, netip.Addr{})
		c.sess.Store(nil)
		c.mu.Lock()
		c.pastFailed, c.pastRefused = c.pastFailed+c.curFailed, c.pastRefused+c.curRefused
		c.curFailed, c.curRefused = 0, 0
		c.mu.Unlock()
		if err := c.forget(); err != nil {
			c.log.Warn("forget the session's WireGuard key", "err", err)
		}
	}()
	c.setStatus(false, offer.Endpoints[0], "deciding: probing the manager over UDP")

	budget := max(decideBudget/time.Duration(len(offer.Endpoints)), 500*time.Millisecond)
	for first := true; ctx.Err() == nil; first = false {
		ep, ok := c.tryEndpoints(ctx, sess, budget)
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			why := fmt.Sprintf("no answer over UDP from %s", joinAddrs(offer.Endpoints))
			if first {
				c.log.Info("WireGuard path unreachable: new connections take the port-forward", "why", why)
			}
			c.setStatus(false, ep, why+"; trying again every 5s")
			if !sleep(ctx, retryEvery) {
				return nil
			}
			continue
		}
		c.log.Info("WireGuard path up: new connections take it", "endpoint", ep)
		c.setStatus(true, ep, "the manager answers over UDP")
		c.end.open.Store(true)
		c.watch(ctx, sess, ep)
		if ctx.Err() != nil {
			return nil
		}
		c.split.close(c.end)
		c.end.in.drop()
		why := fmt.Sprintf("no answer over UDP from %s for %s", ep, deadAfter)
		c.log.Warn("WireGuard path down: its connections are reset, new ones take the port-forward", "why", why)
		c.setStatus(false, ep, why+"; trying again every 5s")
	}
	return nil
}

// tryEndpoints probes each endpoint for its share of the budget and
// returns the first that answers.
func (c *Client) tryEndpoints(ctx context.Context, sess *clientSession, budget time.Duration) (netip.AddrPort, bool) {
	for _, ep := range sess.offer.Endpoints {
		if err := c.setPeer(sess, ep); err != nil {
			c.log.Warn("configure the WireGuard peer", "endpoint", ep, "err", err)
			continue
		}
		start := time.Now()
		t := time.NewTicker(probeEvery)
		for time.Since(start) < budget {
			c.probe(sess)
			select {
			case <-ctx.Done():
				t.Stop()
				return ep, false
			case <-t.C:
			}
			if c.answeredSince(start) {
				t.Stop()
				return ep, true
			}
		}
		t.Stop()
	}
	return sess.offer.Endpoints[len(sess.offer.Endpoints)-1], false
}

// watch probes ten times a second and returns when ctx ends or no answer
// came for deadAfter. While the probes show a lossy link, new connections
// take the port-forward (loss.go).
func (c *Client) watch(ctx context.Context, sess *clientSession, ep netip.AddrPort) {
	t := time.NewTicker(lossProbes)
	defer t.Stop()
	c.loss.reset()
	lossy := false
	defer c.end.lossy.Store(false)
	for i := 0; ; i++ {
		c.probe(sess)
		if i%int(time.Second/lossProbes) == 0 {
			c.split.flows.sweep(time.Now()) // once a second: closed and idle flows go
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if !c.answeredSince(now.Add(-deadAfter)) {
			return
		}
		lost, judged := c.loss.count(now)
		was := lossy
		var why string
		if lossy, why = lossVerdict(lossy, lost, judged); lossy == was {
			continue
		}
		c.end.lossy.Store(lossy)
		if lossy {
			c.log.Warn("WireGuard path lossy: new connections take the port-forward", "why", why)
			c.setStatus(false, ep, why+": new connections take the port-forward until a whole window of probes comes back")
		} else {
			c.log.Info("WireGuard path well again: new connections take it", "endpoint", ep)
			c.setStatus(true, ep, fmt.Sprintf("the manager answers over UDP, and lost none of the last %d probes", lossWindow))
		}
	}
}

// setPeer (re)makes the manager's peer with endpoint ep: a new peer starts
// its handshake at once, where an old one would wait out its back-off.
func (c *Client) setPeer(sess *clientSession, ep netip.AddrPort) error {
	k := sess.offer.ServerKey.hex()
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k)
	fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n", k, ep)
	return c.dev.IpcSet(b.String())
}

// probe sends one datagram to the manager's echo port inside the tunnel.
func (c *Client) probe(sess *clientSession) {
	var payload [probeLen]byte
	copy(payload[:8], sess.token[:])
	seq := c.seq.Add(1)
	binary.BigEndian.PutUint32(payload[8:], seq)
	if sess.inbound && !c.end.lossy.Load() {
		payload[12] = probeTakesIntercepts
	}
	c.loss.sent(seq, time.Now())
	c.end.sendProbe(udp4(netip.AddrPortFrom(sess.offer.Addr4, ProbePort), netip.AddrPortFrom(sess.offer.Server4, ProbePort), payload[:]))
}

// isReply takes a probe's answer out of what the tunnel delivers.
func (c *Client) isReply(b []byte) bool {
	sess := c.sess.Load()
	if sess == nil {
		return false
	}
	p, ok := parse(b)
	if !ok || p.proto != protoUDP || p.src != sess.offer.Server4 || p.sport != ProbePort || p.dport != ProbePort {
		return false
	}
	data := p.b[p.l4+8:]
	if len(data) < probeLen || !bytes.Equal(data[:8], sess.token[:]) {
		return true
	}
	c.lastReply.Store(time.Now().UnixNano())
	c.loss.answered(binary.BigEndian.Uint32(data[8:probeLen]))
	if len(data) >= probeLen+16 {
		failed := binary.BigEndian.Uint64(data[probeLen:])
		refused := binary.BigEndian.Uint64(data[probeLen+8:])
		c.mu.Lock()
		if c.sess.Load() == sess { // answers can cross a session's end
			c.curFailed, c.curRefused = max(c.curFailed, failed), max(c.curRefused, refused)
		}
		c.mu.Unlock()
	}
	return true
}

func (c *Client) answeredSince(t time.Time) bool {
	return c.lastReply.Load() >= t.UnixNano()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func joinAddrs(as []netip.AddrPort) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
