package netstack

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// roundTrip sends msg and wants it back, from dst.
func roundTrip(conn *gonet.UDPConn, dst netip.AddrPort, msg []byte) error {
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	if got := from.(*net.UDPAddr).AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != dst {
		return fmt.Errorf("answer from %v, want %v", from, dst)
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("answer of %d bytes differs from the %d sent", n, len(msg))
	}
	return nil
}

// Several flows at once, IPv4 and IPv6, two of them to one destination
// from different ports; datagrams up to twice the MTU (fragmented).
func TestUDPEcho(t *testing.T) {
	d := &fakeDialer{udp: serveUDPEcho(t)}
	h := newHarness(t, Config{}, d)
	dsts := []netip.AddrPort{
		netip.MustParseAddrPort("10.96.0.10:53"),
		netip.MustParseAddrPort("10.96.0.10:53"),
		netip.MustParseAddrPort("10.96.0.11:5353"),
		netip.MustParseAddrPort("[fd00:96::10]:53"),
	}
	conns := make([]*gonet.UDPConn, len(dsts))
	for i, dst := range dsts {
		conns[i] = h.client.dialUDP(t, dst)
		defer conns[i].Close()
	}
	const perFlow = 20
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		bytes uint64
	)
	for i, dst := range dsts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perFlow {
				msg := randomBytes(1 + (i*perFlow+j)*149%3000)
				if err := roundTrip(conns[i], dst, msg); err != nil {
					t.Errorf("flow %d datagram %d: %v", i, j, err)
					return
				}
				mu.Lock()
				bytes += uint64(len(msg))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// A reply is counted after it is handed to the application, which may
	// read it first: wait for the counters to settle.
	want := Stats{UDPActive: 4, UDPTotal: 4, BytesSent: bytes, BytesReceived: bytes}
	eventually(t, fmt.Sprintf("stats %+v", want), func() bool { return h.stack.Stats() == want })
	if n := len(d.dialed()); n != 4 {
		t.Errorf("%d dials, want one per flow (4)", n)
	}
}

// Traffic keeps a flow open; silence closes it (and its stream) after the
// idle timeout, and the next datagram opens a new one.
func TestUDPIdleTimeout(t *testing.T) {
	const idle = 500 * time.Millisecond
	d := &fakeDialer{udp: serveUDPEcho(t)}
	h := newHarness(t, Config{UDPIdleTimeout: idle}, d)
	dst := netip.MustParseAddrPort("10.96.0.10:53")
	conn := h.client.dialUDP(t, dst)
	defer conn.Close()

	start := time.Now()
	for time.Since(start) < 2*idle {
		if err := roundTrip(conn, dst, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle / 10)
	}
	if n := len(d.dialed()); n != 1 {
		t.Fatalf("%d dials while the flow was busy, want 1", n)
	}
	eventually(t, "the idle flow to close", func() bool {
		_, _, closed := d.state()
		return h.stack.Stats().UDPActive == 0 && closed == 1
	})
	if err := roundTrip(conn, dst, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if st := h.stack.Stats(); st.UDPTotal != 2 || st.UDPActive != 1 {
		t.Errorf("stats %+v, want a second flow", st)
	}
}

// A failed dial drops the flow's datagrams, and its retries do not dial
// again at once.
func TestUDPDialFailureDrops(t *testing.T) {
	dst := netip.MustParseAddrPort("10.96.0.12:53")
	d := &fakeDialer{udp: serveUDPEcho(t), refused: map[netip.AddrPort]bool{dst: true}}
	h := newHarness(t, Config{}, d)
	conn := h.client.dialUDP(t, dst)
	defer conn.Close()
	for range 3 {
		conn.Write([]byte("query"))
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := conn.Read(make([]byte, 100)); err == nil {
			t.Fatalf("got a %d-byte answer from a refused destination", n)
		}
	}
	if n := len(d.dialed()); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
	if st := h.stack.Stats(); st.DialErrors != 1 || st.UDPTotal != 0 {
		t.Errorf("stats %+v, want one dial error and no flow", st)
	}
	if n := h.logs.count("dial refused"); n != 1 {
		t.Errorf("refusal logged %d times, want once", n)
	}
}

// New flows past MaxInflightDials are dropped, not queued; the first
// datagram of a flow that is dialing waits for the stream.
func TestUDPInflightDialCap(t *testing.T) {
	hold := make(chan struct{})
	d := &fakeDialer{udp: serveUDPEcho(t), hold: hold}
	h := newHarness(t, Config{MaxInflightDials: 1}, d)
	dst := netip.MustParseAddrPort("10.96.0.10:53")
	first, second := h.client.dialUDP(t, dst), h.client.dialUDP(t, dst)
	defer first.Close()
	defer second.Close()

	first.Write([]byte("first"))
	eventually(t, "the first dial", func() bool { n, _, _ := d.state(); return n == 1 })
	second.Write([]byte("second"))
	eventually(t, "the second flow dropped", func() bool { return h.stack.Stats().DroppedDials == 1 })
	close(hold)

	buf := make([]byte, 100)
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := first.Read(buf); err != nil || string(buf[:n]) != "first" {
		t.Fatalf("first flow: read %q, %v; want its queued datagram back", buf[:n], err)
	}
	if err := roundTrip(second, dst, []byte("second, again")); err != nil {
		t.Fatalf("second flow: %v", err)
	}
	if _, peak, _ := d.state(); peak != 1 {
		t.Errorf("peak of %d dials in flight, want 1", peak)
	}
}
