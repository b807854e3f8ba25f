package wgpath

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// written is a TUN device that keeps what is written to it.
type written struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (d *written) Write(bufs [][]byte, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		d.pkts = append(d.pkts, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}
func (d *written) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (d *written) File() *os.File                         { return nil }
func (d *written) MTU() (int, error)                      { return MTU, nil }
func (d *written) Name() (string, error)                  { return "written", nil }
func (d *written) Events() <-chan wgtun.Event             { return nil }
func (d *written) Close() error                           { return nil }
func (d *written) BatchSize() int                         { return 1 }

// withAck and withSeq set b's (an IPv4 TCP segment's) acknowledgment
// and sequence numbers.
func withAck(b []byte, ack uint32) []byte { return setTCPWord(b, 28, ack) }
func withSeq(b []byte, seq uint32) []byte { return setTCPWord(b, 24, seq) }

func setTCPWord(b []byte, at int, v uint32) []byte {
	binary.BigEndian.PutUint32(b[at:at+4], v)
	binary.BigEndian.PutUint16(b[36:38], 0)
	binary.BigEndian.PutUint16(b[36:38], checksum(b[20:], pseudo4(b)))
	return b
}

// TestFlowResetsCarryWhatTheKernelExpects: the resets for a path's
// connections carry the sequence number the laptop's kernel expects next:
// past its last acknowledgment, the data that came since in order (an ACK
// may be delayed), not data out of order; a connection still in its
// handshake gets none; and a packet from another local address with a
// flow's port is not that flow's.
func TestFlowResetsCarryWhatTheKernelExpects(t *testing.T) {
	ft := newFlows(10)
	now := time.Now()
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	laptop := netip.MustParseAddrPort("10.210.0.2:40000")
	handshake := netip.MustParseAddrPort("10.210.0.2:40001")
	out := func(b []byte) bool {
		p, _ := parse(b)
		_, ok := ft.outbound(&p, func() bool { return true }, now)
		return ok
	}
	in := func(b []byte) {
		p, _ := parse(b)
		if _, ok := ft.inbound(&p, now); !ok {
			t.Fatalf("inbound %+v: no flow", p)
		}
	}
	if !out(tcp4(handshake, svc, tcpSYN, nil)) || !out(tcp4(laptop, svc, tcpSYN, nil)) ||
		!out(withAck(tcp4(laptop, svc, tcpACK, nil), 1000)) {
		t.Fatal("the flows were not taken")
	}
	in(withSeq(tcp4(svc, laptop, tcpACK, make([]byte, 100)), 1000)) // in order: 1100 next
	in(withSeq(tcp4(svc, laptop, tcpACK, make([]byte, 50)), 2000))  // out of order: ignored
	out(withAck(tcp4(laptop, svc, tcpACK, nil), 900))               // an old ACK, reordered
	if out(withAck(tcp4(netip.MustParseAddrPort("10.210.0.9:40000"), svc, tcpACK, nil), 5000)) {
		t.Error("a packet from another local address followed the flow")
	}
	resets := ft.reset(0)
	if len(resets) != 1 {
		t.Fatalf("%d resets, want one (none for the handshake)", len(resets))
	}
	p, _ := parse(resets[0])
	if netip.AddrPortFrom(p.dst, p.dport) != laptop || p.seq != 1100 {
		t.Errorf("the reset: to %s:%d, sequence %d; want %s, 1100", p.dst, p.dport, p.seq, laptop)
	}
}

// TestSplitLossyKeepsFlowsAndCloseResetsThem: while the path is lossy new
// connections stay off it and those on it go on; when the path then
// closes, its connections are forgotten (their next packets reach the
// stack, which resets them), lossy or not, and the laptop's kernel gets a
// reset for each at once, which it takes: its source the cluster's end,
// its sequence number the last the laptop acknowledged.
func TestSplitLossyKeepsFlowsAndCloseResetsThem(t *testing.T) {
	dev := &written{}
	s := NewSplit(slog.New(slog.DiscardHandler), dev, nil)
	w := newWGEnd(s, MTU, nil)
	s.attach(w)
	w.setAddrs(netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("fd74:756e:6e65:6c00::2"))
	w.open.Store(true)
	now := time.Now()
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	first := netip.MustParseAddrPort("10.210.0.2:40000")
	second := netip.MustParseAddrPort("10.210.0.2:40001")

	if !s.divert(w, tcp4(first, svc, tcpSYN, nil), now) {
		t.Fatal("a new connection on an open path stayed off it")
	}
	w.lossy.Store(true)
	if s.divert(w, tcp4(second, svc, tcpSYN, nil), now) {
		t.Error("a new connection took a lossy path")
	}
	if !s.divert(w, withAck(tcp4(first, svc, tcpACK, []byte("more")), 777), now) {
		t.Error("a connection on the path left it when the path turned lossy")
	}
	s.close(w)
	if len(dev.pkts) != 1 {
		t.Fatalf("%d packets to the kernel as the path closed, want one reset", len(dev.pkts))
	}
	r := dev.pkts[0]
	p, ok := parse(r)
	if !ok || !valid4(r) || p.flags != tcpRST || netip.AddrPortFrom(p.src, p.sport) != svc ||
		netip.AddrPortFrom(p.dst, p.dport) != first || binary.BigEndian.Uint32(r[24:28]) != 777 {
		t.Errorf("the reset: %+v (valid %v), want %s to %s with sequence 777", p, valid4(r), svc, first)
	}
	if s.Flows() != 0 || s.divert(w, tcp4(first, svc, tcpACK, []byte("more")), now) {
		t.Errorf("after the lossy path closed: %d flows left, its connection still diverted", s.Flows())
	}
}
