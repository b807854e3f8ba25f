package wgpath

import (
	"net/netip"
	"sync"
	"time"
)

// flowKey names a flow on the laptop by what stays the same both ways:
// the protocol, the laptop's port and the cluster's address and port.
type flowKey struct {
	proto uint8
	port  uint16 // the laptop's
	peer  netip.AddrPort
}

// flow is one connection the WireGuard path carries.
type flow struct {
	src     netip.Addr // the laptop's own source address, put back on replies
	last    time.Time
	closing time.Time // when a RST or the second FIN was seen; zero while open
	finOut  bool      // the laptop has ended its side
	finIn   bool      // the cluster has
	// next is what the laptop's TCP expects from the cluster next: the
	// further of its last acknowledgment and the end of the last segment
	// that came in order, so that a reset written to the kernel carries
	// exactly that (RFC 5961), even while an ACK is delayed.
	next  uint32
	acked bool // next is set: the laptop has acknowledged something
}

// see notes a TCP packet's flags: a connection is closing after a RST or
// once both sides have sent a FIN (one FIN is a half-close, which may
// carry data for a long while yet).
func (f *flow) see(p *packet, out bool, now time.Time) {
	f.last = now
	if p.proto != protoTCP || !f.closing.IsZero() {
		return
	}
	switch {
	case out && p.flags&tcpACK != 0:
		if !f.acked || seqAfter(p.ack, f.next) {
			f.next, f.acked = p.ack, true
		}
	case !out && f.acked && p.seq == f.next:
		f.next = p.seqEnd() // in order: the kernel takes it
	}
	if p.flags&tcpFIN != 0 {
		if out {
			f.finOut = true
		} else {
			f.finIn = true
		}
	}
	if p.flags&tcpRST != 0 || f.finOut && f.finIn {
		f.closing = now
	}
}

// Idle limits: a TCP connection is held as long as a day without a packet
// (a database's pool idles for hours), a closed one for a little while
// (its last ACKs), a UDP flow for two minutes.
const (
	tcpIdle    = 24 * time.Hour
	tcpClosing = 30 * time.Second
	udpIdle    = 2 * time.Minute
)

// flows is the laptop's table of the connections on the WireGuard path:
// a TCP connection stays on the path it started on, whichever path new
// connections take now, and replies get their original address back. It
// holds at most max flows; past that, new connections take the
// port-forward path.
type flows struct {
	mu  sync.Mutex
	m   map[flowKey]*flow
	max int
	// opened counts the flows ever taken, by protocol: TCP, UDP.
	opened [2]uint64
}

func newFlows(max int) *flows { return &flows{m: map[flowKey]*flow{}, max: max} }

// outbound decides for a packet from the laptop: true when it goes over
// WireGuard. A new TCP connection (a SYN) or UDP flow is taken when open
// says so and there is room; any other packet follows its flow. open is
// read under the table's lock, so a path closing (open false, then reset)
// cannot leave a flow behind on it.
func (t *flows) outbound(p *packet, open func() bool, now time.Time) (src netip.Addr, ok bool) {
	k := flowKey{p.proto, p.sport, netip.AddrPortFrom(p.dst, p.dport)}
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[k]
	isSYN := p.proto == protoTCP && p.flags&(tcpSYN|tcpACK) == tcpSYN
	if f != nil && isSYN && !f.closing.IsZero() {
		delete(t.m, k) // the port is reused for a new connection
		f = nil
	}
	if f != nil && f.src != p.src {
		return netip.Addr{}, false // another local address: not this flow's
	}
	if f == nil {
		if len(t.m) >= t.max || (p.proto == protoTCP && !isSYN) || !open() {
			return netip.Addr{}, false
		}
		f = &flow{src: p.src}
		t.m[k] = f
		if p.proto == protoTCP {
			t.opened[0]++
		} else {
			t.opened[1]++
		}
	}
	f.see(p, true, now)
	return f.src, true
}

// inbound finds the laptop's address for a reply that came over
// WireGuard; ok is false for a packet of no flow, which is dropped.
func (t *flows) inbound(p *packet, now time.Time) (netip.Addr, bool) {
	k := flowKey{p.proto, p.dport, netip.AddrPortFrom(p.src, p.sport)}
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[k]
	if f == nil {
		return netip.Addr{}, false
	}
	f.see(p, false, now)
	return f.src, true
}

// sweep forgets flows past their limits; it returns how many are left.
func (t *flows) sweep(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, f := range t.m {
		switch {
		case !f.closing.IsZero() && now.Sub(f.closing) > tcpClosing,
			k.proto == protoTCP && now.Sub(f.last) > tcpIdle,
			k.proto == protoUDP && now.Sub(f.last) > udpIdle:
			delete(t.m, k)
		}
	}
	return len(t.m)
}

// seqAfter says whether sequence number a comes after b (RFC 1982).
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }

// reset forgets every flow: the path they were on is gone. It returns a
// reset, from the cluster's end to the laptop's, for each open TCP
// connection the laptop has acknowledged something on (one still in its
// handshake resends its SYN, which the stack refuses), each after offset
// bytes of room: the connection's state lived at the manager, and an
// application that only reads would otherwise wait on it until its own
// timeout. Should the kernel find the number off anyway, it answers with
// a challenge ACK, which reaches the stack (the flow is gone) and gets a
// reset with the number the ACK names.
func (t *flows) reset(offset int) [][]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [][]byte
	for k, f := range t.m {
		if k.proto == protoTCP && f.closing.IsZero() && f.acked {
			out = append(out, rst(k.peer, netip.AddrPortFrom(f.src, k.port), f.next, offset))
		}
	}
	clear(t.m)
	return out
}

func (t *flows) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// counts are the open flows and those ever taken, TCP and UDP.
func (t *flows) counts() (tcpOpen, udpOpen, tcpTotal, udpTotal uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, f := range t.m {
		switch {
		case !f.closing.IsZero():
		case k.proto == protoTCP:
			tcpOpen++
		default:
			udpOpen++
		}
	}
	return tcpOpen, udpOpen, t.opened[0], t.opened[1]
}
