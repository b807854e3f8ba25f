package wgpath

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	wgnet "golang.zx2c4.com/wireguard/tun/netstack"

	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/tun/netstack"
)

// recorder is a Dialer that sends every TCP connection to one loopback
// echo server and notes who asked.
type recorder struct {
	target string
	mu     sync.Mutex
	srcs   []netip.AddrPort
}

func (r *recorder) DialStream(ctx context.Context, kind rpc.Kind, src, dst netip.AddrPort) (net.Conn, error) {
	if kind != rpc.KindTCP {
		return nil, rpc.StatusRefused
	}
	r.mu.Lock()
	r.srcs = append(r.srcs, src)
	r.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", r.target)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.srcs)
}

// echoServer is a loopback TCP echo server: the cluster's Service.
func echoServer(t testing.TB) string {
	return testnet.ServeTCP(t, func(c *net.TCPConn) { io.Copy(c, c) }).String()
}

// testServer is the manager's end, its dials going to target; closed with
// the test.
func testServer(t testing.TB, target string) (*Server, *recorder) {
	t.Helper()
	cluster := &recorder{target: target}
	srv, err := NewServer(slog.New(slog.DiscardHandler), 0, cluster, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, cluster
}

// admit gives a new key a place at srv, as the manager's RPC does, and
// returns the offer the laptop gets with it.
func admit(t testing.TB, srv *Server) (Offer, Key) {
	t.Helper()
	priv, err := NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	a4, a6, err := srv.Add(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	ep := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(srv.Port()))
	return Offer{ServerKey: srv.PublicKey(), Endpoints: []netip.AddrPort{ep}, Addr4: a4, Addr6: a6, Server4: Server4}, priv
}

// pathRig is a server whose dials go to target, a laptop, and its path up
// for one session; all of it ends with the test.
type pathRig struct {
	srv     *Server
	cluster *recorder
	l       *laptop
	c       *Client
	offer   Offer
	ctx     context.Context
}

func upPath(t testing.TB, target string) *pathRig {
	t.Helper()
	r := &pathRig{}
	r.srv, r.cluster = testServer(t, target)
	r.l = newLaptop(t, target)
	r.c = r.l.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // before the client closes
	r.ctx = ctx
	var priv Key
	r.offer, priv = admit(t, r.srv)
	go r.c.Run(ctx, r.offer, priv, nil)
	waitFor(t, "the path up", 5*time.Second, func() bool { return r.c.Status().Up })
	return r
}

// client is the laptop's WireGuard device, closed with the test.
func (l *laptop) client(t testing.TB) *Client {
	t.Helper()
	c, err := l.split.NewClient(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// laptop is a userspace "kernel" (wireguard-go's netstack, standing in for
// the laptop's) whose TUN device the daemon's Split and stack serve.
type laptop struct {
	net    *wgnet.Net
	split  *Split
	stream *recorder
}

func newLaptop(t testing.TB, target string) *laptop {
	dev, n, err := wgnet.CreateNetTUN([]netip.Addr{netip.MustParseAddr("10.210.0.2"), netip.MustParseAddr("fd00:210::2")}, nil, 65520)
	if err != nil {
		t.Fatal(err)
	}
	l := &laptop{net: n, stream: &recorder{target: target}}
	l.split = NewSplit(slog.Default(), dev, nil)
	st, err := netstack.New(slog.Default(), l.split.Stack(), l.stream, netstack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// The device first: the stack still reads it, so no packet of the
	// "kernel's" stays blocked on its way out while the device closes.
	t.Cleanup(func() { dev.Close(); st.Close() })
	return l
}

// roundTrip sends n random bytes over c and checks they come back.
func roundTrip(t testing.TB, c net.Conn, n int) error {
	t.Helper()
	want := make([]byte, n)
	rand.Read(want)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write(want)
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("the echo differs")
	}
	return nil
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// TestPath carries connections over WireGuard from a laptop to a server in
// this process (UDP on loopback): a connection opened before the path is
// up stays on the port-forward, new ones take WireGuard with the session's
// tunnel address as their source, and once the server drops the key the
// path goes down and new connections take the port-forward again.
func TestPath(t *testing.T) {
	target := echoServer(t)
	srv, cluster := testServer(t, target)
	l := newLaptop(t, target)
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	before, err := l.net.DialContextTCPAddrPort(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := roundTrip(t, before, 1000); err != nil || l.stream.count() != 1 {
		t.Fatalf("before the path: %v, %d port-forward dials", err, l.stream.count())
	}

	offer, priv := admit(t, srv)
	a4, ep := offer.Addr4, offer.Endpoints[0]
	c := l.client(t)
	go c.Run(ctx, offer, priv, nil)
	waitFor(t, "the path up", 5*time.Second, func() bool { return c.Status().Up })

	over, err := l.net.DialContextTCPAddrPort(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	if err := roundTrip(t, over, 4<<20); err != nil {
		t.Fatalf("over WireGuard: %v", err)
	}
	if cluster.count() != 1 || cluster.srcs[0].Addr() != a4 || l.stream.count() != 1 {
		t.Fatalf("over WireGuard: the server saw %v (want one from %s), the port-forward %d dials", cluster.srcs, a4, l.stream.count())
	}
	if err := roundTrip(t, before, 1000); err != nil {
		t.Fatalf("the connection from before the path came up: %v", err)
	}
	if st := c.Status(); st.Flows != 1 || st.Endpoint != ep {
		t.Fatalf("status %+v, want one flow over %s", st, ep)
	}

	srv.Remove(priv.Public())
	waitFor(t, "the path down", 8*time.Second, func() bool { return !c.Status().Up })
	if err := roundTrip(t, over, 1000); err == nil {
		t.Fatal("a connection of a path that went down still works")
	}
	after, err := l.net.DialContextTCPAddrPort(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if err := roundTrip(t, after, 1000); err != nil || l.stream.count() != 2 {
		t.Fatalf("after the path went down: %v, %d port-forward dials (want 2)", err, l.stream.count())
	}

	// The next session brings its own key to the same device.
	cancel()
	waitFor(t, "the first session's end", 2*time.Second, func() bool { return c.sess.Load() == nil })
	offer2, priv2 := admit(t, srv)
	b4 := offer2.Addr4
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go c.Run(ctx2, offer2, priv2, nil)
	waitFor(t, "the second session's path up", 5*time.Second, func() bool { return c.Status().Up })
	again, err := l.net.DialContextTCPAddrPort(ctx2, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := roundTrip(t, again, 1000); err != nil || cluster.count() != 2 || cluster.srcs[1].Addr() != b4 {
		t.Fatalf("the second session: %v; the server saw %v", err, cluster.srcs)
	}
}

// TestUnknownKeyGetsNoAnswer: a key the server did not add, and a known
// key sending from an address not its own, never bring the path up; the
// known key from its own address does, on the same server, so the
// refusals are the server's.
func TestUnknownKeyGetsNoAnswer(t *testing.T) {
	target := echoServer(t)
	srv, _ := testServer(t, target)
	offer, known := admit(t, srv)
	stranger, _ := NewPrivateKey()
	for _, tc := range []struct {
		name string
		priv Key
		addr netip.Addr
		up   bool
	}{
		{"a made-up key", stranger, offer.Addr4, false},
		{"another session's address", known, offer.Addr4.Next(), false},
		{"the control: the key from its own address", known, offer.Addr4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newLaptop(t, target).client(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			o := offer
			o.Addr4 = tc.addr
			done := make(chan struct{})
			go func() { c.Run(ctx, o, tc.priv, nil); close(done) }()
			defer func() { cancel(); <-done }()
			if tc.up {
				waitFor(t, "the path up", 5*time.Second, func() bool { return c.Status().Up })
				return
			}
			waitFor(t, "the decision", 5*time.Second, func() bool {
				return strings.Contains(c.Status().Why, "no answer over UDP")
			})
			if c.Status().Up {
				t.Fatal("the path came up")
			}
		})
	}
}

// BenchmarkDownload moves bytes from a loopback server through the
// manager's end and WireGuard to the laptop's stack, all in this process:
// what the path itself costs, without the lab's kernels.
func BenchmarkDownload(b *testing.B) {
	chunk := make([]byte, 256<<10)
	source := testnet.ServeTCP(b, func(c *net.TCPConn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}).String()
	r := upPath(b, source)
	conn, err := r.l.net.DialContextTCPAddrPort(r.ctx, netip.MustParseAddrPort("10.96.0.10:80"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPathIPv6 carries a connection to an IPv6 Service address over
// WireGuard: the session's IPv6 tunnel address is its source at the
// server, and the echo comes back whole.
func TestPathIPv6(t *testing.T) {
	r := upPath(t, echoServer(t))
	cluster, l, a6 := r.cluster, r.l, r.offer.Addr6
	conn, err := l.net.DialContextTCPAddrPort(r.ctx, netip.MustParseAddrPort("[fd00:96::10]:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(t, conn, 1<<20); err != nil {
		t.Fatalf("over WireGuard, IPv6: %v", err)
	}
	if cluster.count() != 1 || cluster.srcs[0].Addr() != a6 || l.stream.count() != 0 {
		t.Fatalf("the server saw %v (want one from %s), the port-forward %d dials", cluster.srcs, a6, l.stream.count())
	}
}

// BenchmarkConnectRoundTrip opens a connection over the path, sends a
// byte, reads its echo and closes, as a request with a new connection
// each does: what the path adds to a request's latency.
func BenchmarkConnectRoundTrip(b *testing.B) {
	r := upPath(b, echoServer(b))
	l, ctx := r.l, r.ctx
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	buf := []byte{1}
	b.ResetTimer()
	for range b.N {
		conn, err := l.net.DialContextTCPAddrPort(ctx, svc)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}

// TestServerOpensToLaptop: the manager's end opens a connection to the
// session's laptop over the path once the laptop's probes show it live;
// the laptop's handler gets it and the bytes go both ways. Another port
// of the laptop's tunnel address gets nothing, and after the session's
// end the laptop is no longer live.
func TestServerOpensToLaptop(t *testing.T) {
	target := echoServer(t)
	srv, _ := testServer(t, target)
	l := newLaptop(t, target)
	c := l.client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	offer, priv := admit(t, srv)
	if srv.Live(offer.Addr4) {
		t.Fatal("live before any probe")
	}
	done := make(chan struct{})
	go func() {
		c.Run(ctx, offer, priv, func(conn net.Conn) { io.Copy(conn, conn); conn.Close() })
		close(done)
	}()
	waitFor(t, "the laptop live at the server", 5*time.Second, func() bool { return srv.Live(offer.Addr4) })
	conn, err := srv.DialLaptop(ctx, offer.Addr4)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(t, conn, 2<<20); err != nil {
		t.Fatalf("to the laptop over WireGuard: %v", err)
	}
	if l.stream.count() != 0 {
		t.Fatalf("the laptop's port-forward dialed %d times", l.stream.count())
	}
	// Only the intercept port is let through to the laptop's stack: a
	// SYN to another goes unanswered.
	dctx, dcancel := context.WithTimeout(ctx, time.Second)
	defer dcancel()
	other, err := srv.stack.DialTCP(dctx, Server4, netip.AddrPortFrom(offer.Addr4, 22))
	if err == nil {
		other.Close()
		t.Fatal("another port of the laptop's tunnel address answered")
	}
	cancel()
	<-done
	srv.Remove(priv.Public())
	if srv.Live(offer.Addr4) {
		t.Fatal("live after the session's end")
	}
}

// TestProbeAnswersCarryDialErrors: the counts the server reports for a
// session reach the laptop's client with the next probe's answer; a
// laptop that takes no intercepted connections is not live for them.
func TestProbeAnswersCarryDialErrors(t *testing.T) {
	target := echoServer(t)
	srv, _ := testServer(t, target)
	offer, priv := admit(t, srv)
	srv.ReportDialErrors(func(a netip.Addr) (uint64, uint64) {
		if a != offer.Addr4 {
			return 0, 0
		}
		return 5, 3
	})
	c := newLaptop(t, target).client(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, offer, priv, nil); close(done) }()
	waitFor(t, "the counts at the laptop", 5*time.Second, func() bool { f, r := c.DialErrors(); return f == 5 && r == 3 })
	// A laptop that serves no connections of the manager's (nil handler)
	// does not offer to take them: the manager opens none over the path.
	if srv.Live(offer.Addr4) || !srv.Heard(offer.Addr4) {
		t.Fatalf("a laptop without a handler: live %v, heard %v; want heard, not live for intercepts", srv.Live(offer.Addr4), srv.Heard(offer.Addr4))
	}
	cancel()
	<-done
	// A session's counts stay counted after it.
	if f, r := c.DialErrors(); f != 5 || r != 3 {
		t.Fatalf("after the session: %d failed, %d refused", f, r)
	}
}

// TestLaptopThatCannotListenTakesNoIntercepts: when the laptop's intercept
// port cannot be opened, its probes stop offering intercepts, so the
// manager sends them over the session rather than dialing in vain.
func TestLaptopThatCannotListenTakesNoIntercepts(t *testing.T) {
	target := echoServer(t)
	srv, _ := testServer(t, target)
	offer, priv := admit(t, srv)
	c := newLaptop(t, target).client(t)
	taken, err := c.end.in.listen(offer.Addr4)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c.Run(ctx, offer, priv, func(conn net.Conn) { conn.Close() })
		close(done)
	}()
	waitFor(t, "the path up", 5*time.Second, c.end.open.Load)
	time.Sleep(5 * lossProbes) // five probes heard
	if srv.Live(offer.Addr4) || !srv.Heard(offer.Addr4) {
		t.Errorf("a laptop whose intercept port is taken: live %v, heard %v; want heard, not offering intercepts", srv.Live(offer.Addr4), srv.Heard(offer.Addr4))
	}
	cancel()
	<-done
}
