package wgpath

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
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
	aliveEvery   = time.Second            // a probe a second while up
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

// Client is one session's WireGuard path on the laptop.
type Client struct {
	log   *slog.Logger
	split *Split
	end   *wgEnd
	dev   *device.Device
	offer Offer
	token [8]byte
	seq   atomic.Uint32

	lastReply atomic.Int64 // unix nanoseconds of the last probe answer
	mu        sync.Mutex   // guards status
	status    Status
}

// Start brings up a WireGuard device for one session, attached to the
// split but not yet open to new connections: Run decides that.
func (s *Split) Start(log *slog.Logger, offer Offer, priv Key) (*Client, error) {
	if !offer.Addr4.Is4() || !offer.Server4.Is4() || len(offer.Endpoints) == 0 {
		return nil, fmt.Errorf("the manager's WireGuard offer is incomplete: address %v, server %v, %d endpoints",
			offer.Addr4, offer.Server4, len(offer.Endpoints))
	}
	if len(offer.Endpoints) > maxEndpoints {
		offer.Endpoints = offer.Endpoints[:maxEndpoints]
	}
	c := &Client{log: log.With("subsystem", "wireguard"), split: s, offer: offer}
	if _, err := rand.Read(c.token[:]); err != nil {
		return nil, err
	}
	c.end = newWGEnd(s, MTU, offer.Addr4, offer.Addr6, c.isReply)
	c.dev = device.NewDevice(c.end, conn.NewDefaultBind(), wgLogger(c.log))
	if err := c.dev.IpcSet("private_key=" + priv.hex() + "\nlisten_port=0\n"); err != nil {
		c.dev.Close()
		return nil, fmt.Errorf("configure WireGuard: %w", err)
	}
	if err := c.dev.Up(); err != nil {
		c.dev.Close()
		return nil, fmt.Errorf("start WireGuard: %w", err)
	}
	s.attach(c.end)
	c.setStatus(false, offer.Endpoints[0], "deciding: probing the manager over UDP")
	return c, nil
}

// Close ends the path: its connections are reset, new ones take the
// port-forward path.
func (c *Client) Close() {
	c.split.close(c.end)
	c.dev.Close() // closes c.end, which detaches it
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

// Run decides the path until ctx ends, then closes it: it tries the
// endpoints in turn within 2 s, opens the path at the first answer, keeps
// probing once a second, closes the path after 3 s without an answer and
// tries again every 5 s.
func (c *Client) Run(ctx context.Context) {
	defer c.Close()
	budget := max(decideBudget/time.Duration(len(c.offer.Endpoints)), 500*time.Millisecond)
	for first := true; ctx.Err() == nil; first = false {
		ep, ok := c.tryEndpoints(ctx, budget)
		if !ok {
			if ctx.Err() != nil {
				return
			}
			why := fmt.Sprintf("no answer over UDP from %s", joinAddrs(c.offer.Endpoints))
			if first {
				c.log.Info("WireGuard path unreachable: new connections take the port-forward", "why", why)
			}
			c.setStatus(false, ep, why+"; trying again every 5s")
			if !sleep(ctx, retryEvery) {
				return
			}
			continue
		}
		c.log.Info("WireGuard path up: new connections take it", "endpoint", ep)
		c.setStatus(true, ep, "the manager answers over UDP")
		c.end.open.Store(true)
		c.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		c.split.close(c.end)
		why := fmt.Sprintf("no answer over UDP from %s for %s", ep, deadAfter)
		c.log.Warn("WireGuard path down: its connections are reset, new ones take the port-forward", "why", why)
		c.setStatus(false, ep, why+"; trying again every 5s")
	}
}

// tryEndpoints probes each endpoint for its share of the budget and
// returns the first that answers.
func (c *Client) tryEndpoints(ctx context.Context, budget time.Duration) (netip.AddrPort, bool) {
	for _, ep := range c.offer.Endpoints {
		if err := c.setPeer(ep); err != nil {
			c.log.Warn("configure the WireGuard peer", "endpoint", ep, "err", err)
			continue
		}
		start := time.Now()
		t := time.NewTicker(probeEvery)
		for time.Since(start) < budget {
			c.probe()
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
	return c.offer.Endpoints[len(c.offer.Endpoints)-1], false
}

// watch probes once a second and returns when ctx ends or no answer came
// for deadAfter.
func (c *Client) watch(ctx context.Context) {
	t := time.NewTicker(aliveEvery)
	defer t.Stop()
	for {
		c.probe()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !c.answeredSince(time.Now().Add(-deadAfter)) {
			return
		}
	}
}

// setPeer (re)makes the manager's peer with endpoint ep: a new peer starts
// its handshake at once, where an old one would wait out its back-off.
func (c *Client) setPeer(ep netip.AddrPort) error {
	k := c.offer.ServerKey.hex()
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k)
	fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n", k, ep)
	return c.dev.IpcSet(b.String())
}

// probe sends one datagram to the manager's echo port inside the tunnel.
func (c *Client) probe() {
	var payload [12]byte
	copy(payload[:8], c.token[:])
	binary.BigEndian.PutUint32(payload[8:], c.seq.Add(1))
	c.end.send(udp4(netip.AddrPortFrom(c.offer.Addr4, ProbePort), netip.AddrPortFrom(c.offer.Server4, ProbePort), payload[:]))
}

// isReply takes a probe's answer out of what the tunnel delivers.
func (c *Client) isReply(b []byte) bool {
	p, ok := parse(b)
	if !ok || p.proto != protoUDP || p.src != c.offer.Server4 || p.sport != ProbePort || p.dport != ProbePort {
		return false
	}
	if data := p.b[p.l4+8:]; len(data) >= 8 && bytes.Equal(data[:8], c.token[:]) {
		c.lastReply.Store(time.Now().UnixNano())
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
