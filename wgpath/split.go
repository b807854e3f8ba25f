package wgpath

import (
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	wgtun "golang.zx2c4.com/wireguard/tun"

	"tunnel.dev/tunnel/tun"
)

// Split stands between the laptop's TUN device and the userspace stack.
// The stack reads the device through it (Stack()), and while a WireGuard
// path is attached the packets of its flows go there instead, their
// source rewritten to the session's tunnel address, and come back with
// the laptop's own. A connection stays on the path it started on: new
// connections take WireGuard while it is open, and those already in the
// stack go on over the port-forward.
type Split struct {
	log   *slog.Logger
	dev   tun.Device
	flows *flows
	now   func() time.Time
	// local says which destinations the stack itself answers (the DNS
	// resolver's address): never diverted.
	local func(netip.Addr) bool

	cur atomic.Pointer[wgEnd] // the attached path; nil: none
	mu  sync.Mutex            // serializes attach and detach

	sent, received atomic.Uint64 // payload bytes over WireGuard
}

// Stats count the connections and payload the WireGuard path carried, as
// the userspace stack counts those of the port-forward.
type Stats struct {
	TCPActive, TCPTotal   uint64
	UDPActive, UDPTotal   uint64
	BytesSent, BytesRecvd uint64
}

// Stats are the path's counters since NewSplit.
func (s *Split) Stats() Stats {
	var st Stats
	st.TCPActive, st.UDPActive, st.TCPTotal, st.UDPTotal = s.flows.counts()
	st.BytesSent, st.BytesRecvd = s.sent.Load(), s.received.Load()
	return st
}

// maxFlows bounds the flow table: past it new connections take the
// port-forward path.
const maxFlows = 1 << 16

// NewSplit wraps dev; local names the addresses the stack answers itself.
func NewSplit(log *slog.Logger, dev tun.Device, local func(netip.Addr) bool) *Split {
	if local == nil {
		local = func(netip.Addr) bool { return false }
	}
	return &Split{log: log, dev: dev, flows: newFlows(maxFlows), now: time.Now, local: local}
}

// Stack is the device the userspace stack reads and writes.
func (s *Split) Stack() tun.Device { return stackEnd{s} }

// Flows is how many connections the WireGuard path carries now.
func (s *Split) Flows() int { return s.flows.len() }

type stackEnd struct{ s *Split }

func (e stackEnd) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := e.s.dev.Read(bufs, sizes, offset)
		w := e.s.cur.Load()
		if w == nil {
			return n, err
		}
		now := e.s.now()
		keep := 0
		for i := range n {
			pkt := bufs[i][offset : offset+sizes[i]]
			if e.s.divert(w, pkt, now) {
				continue
			}
			if keep != i {
				if len(bufs[keep]) < offset+len(pkt) {
					continue // cannot happen with the stack's buffers; TCP resends
				}
				copy(bufs[keep][offset:], pkt)
				sizes[keep] = sizes[i]
			}
			keep++
		}
		if keep > 0 || err != nil {
			return keep, err
		}
	}
}

func (e stackEnd) Write(bufs [][]byte, offset int) (int, error) { return e.s.dev.Write(bufs, offset) }
func (e stackEnd) MTU() (int, error)                            { return e.s.dev.MTU() }
func (e stackEnd) Name() (string, error)                        { return e.s.dev.Name() }
func (e stackEnd) File() *os.File                               { return e.s.dev.File() }
func (e stackEnd) Events() <-chan wgtun.Event                   { return e.s.dev.Events() }
func (e stackEnd) Close() error                                 { return e.s.dev.Close() }
func (e stackEnd) BatchSize() int                               { return e.s.dev.BatchSize() }

// divert sends pkt to the WireGuard path when its flow is there, or is new
// and the path is open; false leaves it to the stack.
func (s *Split) divert(w *wgEnd, b []byte, now time.Time) bool {
	if len(b) > w.mtu {
		return false // a datagram WireGuard cannot carry whole
	}
	p, ok := parse(b)
	// TCP only: the manager's stack would split a large UDP answer into
	// IP fragments, which the way back cannot tell apart; datagrams take
	// the port-forward, whole.
	if !ok || p.proto != protoTCP || s.local(p.dst) {
		return false
	}
	addrs := w.addrs.Load()
	if addrs == nil {
		return false // between sessions
	}
	tunnel := addrs[0]
	if p.dst.Is6() {
		tunnel = addrs[1]
	}
	if !tunnel.IsValid() {
		return false
	}
	if _, ok := s.flows.outbound(&p, w.takesNew, now); !ok {
		return false
	}
	p.setSrc(tunnel)
	s.sent.Add(uint64(p.payload()))
	if !w.send(p.b) {
		w.dropped.Add(1) // the queue is full: TCP resends
	}
	return true
}

// attach makes w the WireGuard path; any earlier one is detached.
func (s *Split) attach(w *wgEnd) {
	s.mu.Lock()
	old := s.cur.Swap(w)
	s.forget()
	s.mu.Unlock()
	if old != nil {
		old.Close() // its detach finds it gone
	}
}

// detach ends w's part: its flows are forgotten and their connections
// reset in the kernel (forget), and the applications reconnect.
func (s *Split) detach(w *wgEnd) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.CompareAndSwap(w, nil) {
		s.forget()
	}
}

// close stops new flows on w and forgets the ones it carried (the path is
// down); w stays attached so that it can open again.
func (s *Split) close(w *wgEnd) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.open.Swap(false) && s.cur.Load() == w {
		s.forget()
	}
}

// resetOffset is the room left before each reset written to the TUN
// device, for the header a Linux TUN with offloads puts there.
const resetOffset = 16

// forget forgets every flow of the path, and resets their connections in
// the laptop's kernel. Call it with s.mu held.
func (s *Split) forget() {
	resets := s.flows.reset(resetOffset)
	if len(resets) == 0 {
		return
	}
	if _, err := s.dev.Write(resets, resetOffset); err != nil {
		s.log.Debug("reset the WireGuard path's connections", "err", err)
	}
}

// wgEnd is the device a WireGuard device reads the diverted packets from
// and writes the cluster's answers to. Closing it (as the WireGuard device
// does when it closes) does not close the TUN device.
type wgEnd struct {
	s       *Split
	mtu     int
	addrs   atomic.Pointer[[2]netip.Addr] // the session's tunnel addresses, IPv4 and IPv6; nil between sessions
	open    atomic.Bool                   // the path is up: its flows go on, new ones may start
	lossy   atomic.Bool                   // the link loses packets: new flows take the port-forward
	queue   chan *[]byte
	probes  chan *[]byte // read first: a full queue must not look like a dead path
	bufs    sync.Pool    // of *[]byte with room for mtu bytes
	done    chan struct{}
	once    sync.Once
	events  chan wgtun.Event
	dropped atomic.Uint64
	// reply is called for each packet from the cluster before it is
	// delivered; true means it was the path's own (a probe's answer).
	reply func(b []byte) bool
	in    *inbound // the connections the manager opens; nil: none
}

// endQueue is how many packets wait for WireGuard's encryption.
const endQueue = 1024

func newWGEnd(s *Split, mtu int, reply func([]byte) bool) *wgEnd {
	w := &wgEnd{s: s, mtu: mtu, queue: make(chan *[]byte, endQueue), probes: make(chan *[]byte, 4),
		done: make(chan struct{}), events: make(chan wgtun.Event, 1), reply: reply}
	w.bufs.New = func() any { b := make([]byte, 0, mtu); return &b }
	w.events <- wgtun.EventUp
	return w
}

// takesNew says whether new connections take the path now.
func (w *wgEnd) takesNew() bool { return w.open.Load() && !w.lossy.Load() }

// setAddrs sets the session's tunnel addresses; invalid ones clear them.
func (w *wgEnd) setAddrs(a4, a6 netip.Addr) {
	if !a4.IsValid() {
		w.addrs.Store(nil)
		return
	}
	w.addrs.Store(&[2]netip.Addr{a4, a6})
}

// send queues a copy of b; false when the queue is full or w is closed.
func (w *wgEnd) send(b []byte) bool {
	select {
	case <-w.done:
		return false
	default:
	}
	p := w.bufs.Get().(*[]byte)
	*p = append((*p)[:0], b...)
	select {
	case w.queue <- p:
		return true
	default:
		w.bufs.Put(p)
		return false
	}
}

// sendProbe queues one of the path's own probes ahead of the data.
func (w *wgEnd) sendProbe(b []byte) {
	p := w.bufs.Get().(*[]byte)
	*p = append((*p)[:0], b...)
	select {
	case w.probes <- p:
	default:
		w.bufs.Put(p)
	}
}

func (w *wgEnd) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var b *[]byte
	select {
	case b = <-w.probes:
	default:
		select {
		case b = <-w.probes:
		case b = <-w.queue:
		case <-w.done:
			return 0, os.ErrClosed
		}
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], *b)
		w.bufs.Put(b)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case b = <-w.queue:
		default:
			return n, nil
		}
	}
}

// Write delivers what came over WireGuard to the TUN device, each packet
// with the laptop's own address put back; packets of no flow are dropped.
func (w *wgEnd) Write(bufs [][]byte, offset int) (int, error) {
	now := w.s.now()
	out, in := bufs[:0:0], bufs[:0:0]
	for _, buf := range bufs {
		b := buf[offset:]
		if w.reply != nil && w.reply(b) {
			continue
		}
		p, ok := parse(b)
		addrs := w.addrs.Load()
		if !ok || addrs == nil || (p.dst != addrs[0] && p.dst != addrs[1]) {
			continue
		}
		if w.in != nil && isInbound(&p) {
			in = append(in, buf)
			continue
		}
		src, ok := w.s.flows.inbound(&p, now)
		if !ok {
			continue
		}
		p.setDst(src)
		w.s.received.Add(uint64(p.payload()))
		out = append(out, buf)
	}
	if len(in) > 0 {
		w.in.deliver(in, offset)
	}
	if len(out) == 0 {
		return len(bufs), nil
	}
	if _, err := w.s.dev.Write(out, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

func (w *wgEnd) MTU() (int, error)          { return w.mtu, nil }
func (w *wgEnd) Name() (string, error)      { return "wireguard", nil }
func (w *wgEnd) File() *os.File             { return nil }
func (w *wgEnd) Events() <-chan wgtun.Event { return w.events }
func (w *wgEnd) BatchSize() int             { return w.s.dev.BatchSize() }
func (w *wgEnd) Close() error {
	w.once.Do(func() {
		close(w.done)
		close(w.events)
		w.s.detach(w)
	})
	return nil
}
