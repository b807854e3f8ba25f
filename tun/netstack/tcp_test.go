package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Cluster destinations the routes would send into the device.
var (
	svcV4 = netip.MustParseAddrPort("10.96.0.10:80")
	svcV6 = netip.MustParseAddrPort("[fd00:96::10]:80")
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, uint64(n)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestTCPEcho(t *testing.T) {
	for _, dst := range []netip.AddrPort{svcV4, svcV6} {
		t.Run(dst.Addr().String(), func(t *testing.T) {
			d := &fakeDialer{tcp: serveTCP(t, echo)}
			h := newHarness(t, Config{}, d)
			conn, err := h.client.dialTCP(timeout(t, 10*time.Second), dst)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))

			data := randomBytes(3 << 20)
			werr := make(chan error, 1)
			go func() {
				_, err := conn.Write(data)
				if err == nil {
					err = conn.CloseWrite()
				}
				werr <- err
			}()
			got, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("read echo: %v (after %d bytes)", err, len(got))
			}
			if err := <-werr; err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(data))
			}
			conn.Close()
			if got := d.dialed(); !slices.Equal(got, []netip.AddrPort{dst}) {
				t.Errorf("dialed %v, want [%v]", got, dst)
			}
			eventually(t, "the flow to end", func() bool { return h.stack.Stats().TCPActive == 0 })
			st := h.stack.Stats()
			want := Stats{TCPTotal: 1, BytesSent: uint64(len(data)), BytesReceived: uint64(len(data))}
			if st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
		})
	}
}

// A download moves in batches: the stack hands the device several packets
// per Write, which lets a real device coalesce them.
func TestTCPDownloadBatches(t *testing.T) {
	const size = 4 << 20
	d := &fakeDialer{tcp: serveTCP(t, source(size))}
	h := newHarness(t, Config{}, d)
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	want, _ := io.ReadAll(io.LimitReader(&pattern{}, size))
	if !bytes.Equal(got, want) {
		t.Fatalf("download differs: got %d bytes, want %d", len(got), len(want))
	}
	if m := h.dev.maxWriteBatch.Load(); m < 2 {
		t.Errorf("largest device write held %d packets, want batches", m)
	}
	// Counted after the write to the application, which may have read first.
	eventually(t, fmt.Sprintf("BytesReceived = %d", size), func() bool { return h.stack.Stats().BytesReceived == uint64(size) })
}

// The client half-closes; the server answers only then, and the answer
// still reaches the client.
func TestTCPHalfClose(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, answerAtEOF)}
	h := newHarness(t, Config{}, d)
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	if string(got) != "got 5 bytes" {
		t.Errorf("answer %q, want %q", got, "got 5 bytes")
	}
}

// A stream that cannot half-close keeps the flow open: the client's
// CloseWrite does not cut off the answer.
func TestTCPStreamWithoutHalfClose(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, echo), noHalfClose: true}
	h := newHarness(t, Config{}, d)
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v; want ping", buf, err)
	}
}

// A failed dial refuses the client's connect at once with a reset, rather
// than leaving it to time out.
func TestTCPDialFailureResets(t *testing.T) {
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		return ln.Addr().String()
	}()
	refused := netip.MustParseAddrPort("10.96.0.11:443")
	unreachable := netip.MustParseAddrPort("10.96.0.12:443")
	for _, tc := range []struct {
		name string
		dst  netip.AddrPort
		log  string
	}{
		{"cluster refuses", refused, "dial refused"},
		{"dial error", unreachable, "dial failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{
				refused: map[netip.AddrPort]bool{refused: true},
				routes:  map[netip.AddrPort]string{unreachable: closedPort},
			}
			h := newHarness(t, Config{}, d)
			for i := range 2 {
				_, err := h.client.dialTCP(timeout(t, 10*time.Second), tc.dst)
				if err == nil {
					t.Fatal("connect succeeded, want refused")
				}
				if errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refused") {
					t.Fatalf("connect %d: %v, want connection refused", i, err)
				}
			}
			if got := h.stack.Stats(); got.DialErrors != 2 || got.TCPTotal != 0 {
				t.Errorf("stats %+v, want 2 dial errors and no connection", got)
			}
			// Two failures to one destination, one log line.
			if n := h.logs.count(tc.log); n != 1 {
				t.Errorf("%q logged %d times, want once", tc.log, n)
			}
		})
	}
}

// A dial that outlasts DialTimeout is abandoned and the connect refused.
func TestTCPDialTimeout(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, echo), hold: make(chan struct{})}
	h := newHarness(t, Config{DialTimeout: 100 * time.Millisecond}, d)
	_, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("connect: %v, want connection refused", err)
	}
	if st := h.stack.Stats(); st.DialErrors != 1 {
		t.Errorf("stats %+v, want one dial error", st)
	}
}

// A stream that breaks mid-transfer resets the client's connection: a
// truncated download must not look complete.
func TestTCPStreamErrorResetsClient(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, func(c *net.TCPConn) {
		// Wait for the client, or the reset may beat the dial's return.
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			return
		}
		c.Write(make([]byte, 1000))
		c.SetLinger(0) // close with a reset
	})}
	h := newHarness(t, Config{}, d)
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err == nil {
		t.Fatalf("read %d bytes and a clean EOF, want a reset", len(got))
	}
}

// A stream that asks for a send buffer gets it for its connection, within
// the stack's bound; others are tuned by the stack, from its default.
func TestTCPStreamSendBuffer(t *testing.T) {
	for _, tc := range []struct {
		ask, want int64
	}{
		{3 << 20, 3 << 20},
		{64 << 20, 8 << 20}, // the stack's MaxSendBuffer
		{0, tcpTXBufDefault},
	} {
		d := &fakeDialer{tcp: serveTCP(t, echo), sendBuffer: int(tc.ask)}
		h := newHarness(t, Config{MaxSendBuffer: 8 << 20}, d)
		conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		// An echo: the stack has set the connection up and is copying.
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		var got int64
		eventually(t, "the forwarded connection's endpoint", func() bool {
			for _, te := range h.stack.ipstack.RegisteredEndpoints() {
				ep, ok := te.(tcpip.Endpoint)
				if ok && ep.Info().(*stack.TransportEndpointInfo).ID.LocalPort == svcV4.Port() {
					got = ep.SocketOptions().GetSendBufferSize()
					return true
				}
			}
			return false
		})
		conn.Close()
		if got != tc.want {
			t.Errorf("asked for %d: send buffer %d, want %d", tc.ask, got, tc.want)
		}
	}
}

// A dialer that answers ErrBusy has the SYN dropped, not reset: the
// client's retransmission connects.
func TestTCPDialerBusyDropsTheSYN(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, echo), busy: 1}
	h := newHarness(t, Config{}, d)
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	conn.Close()
	if st := h.stack.Stats(); st.DroppedDials != 1 || st.DialErrors != 0 || len(d.dialed()) != 2 {
		t.Errorf("stats %+v after %d dials, want one dropped SYN, no dial error, two dials", st, len(d.dialed()))
	}
}

// Past MaxInflightDials, SYNs are dropped (not queued, not refused): the
// client's retransmission connects once a dial slot frees up.
func TestTCPInflightDialCap(t *testing.T) {
	hold := make(chan struct{})
	d := &fakeDialer{tcp: serveTCP(t, echo), hold: hold}
	h := newHarness(t, Config{MaxInflightDials: 2}, d)

	ctx := timeout(t, 20*time.Second)
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := h.client.dialTCP(ctx, svcV4)
			if err == nil {
				conn.Close()
			}
			errs <- err
		}()
	}
	eventually(t, "two dials", func() bool { n, _, _ := d.state(); return n == 2 })
	eventually(t, "a dropped SYN", func() bool { return h.stack.Stats().DroppedDials > 0 })
	if n, peak, _ := d.state(); n != 2 || peak != 2 {
		t.Fatalf("%d dials in flight (peak %d), want 2", n, peak)
	}
	close(hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("connect: %v", err)
		}
	}
	if _, peak, _ := d.state(); peak != 2 {
		t.Errorf("peak of %d dials in flight, want 2", peak)
	}
	if n := len(d.dialed()); n != 3 {
		t.Errorf("%d dials, want 3", n)
	}
}
