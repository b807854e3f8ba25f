package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus/testutil"
	wgnet "golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/tun/netstack"
	"tunnel.dev/tunnel/version"
	"tunnel.dev/tunnel/wgpath"
)

// noStreams is the laptop's port-forward path in these tests: it must not
// be used.
type noStreams struct{ t testing.TB }

func (n noStreams) DialStream(context.Context, rpc.Kind, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
	n.t.Error("a connection took the port-forward path")
	return nil, rpc.StatusRefused
}

// TestWireGuardPath: a verified laptop session gets the WireGuard path, and
// a connection over it reaches the cluster through the same decision and
// dial as a stream; an unverified session gets none; when the session
// ends, its key gets no answer and its connection is closed.
func TestWireGuardPath(t *testing.T) {
	m := wgServing(t)
	addr := serve(t, m)
	// The laptop's stack will not send to loopback: it dials a Service's
	// address, which the manager's dial takes to the echo server.
	echo, _ := echoTCP(t)
	dial := m.dialTCP
	m.dialTCP = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) { return dial(ctx, echo) }
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	priv, _ := wgpath.NewPrivateKey()
	pub := priv.Public()

	stranger := controlClient(t, laptop(t, addr))
	if _, err := stranger.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: "forged"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: pub[:]}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an unverified session: %v, want PermissionDenied", err)
	}

	sess := laptop(t, addr)
	ada := controlClient(t, sess)
	if _, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: "proof-ada"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ada.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: []byte("short")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a bad key: %v, want InvalidArgument", err)
	}
	offer, err := ada.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: pub[:]})
	if err != nil {
		t.Fatal(err)
	}
	if len(offer.GetEndpoints()) != 1 || offer.GetServerAddress() != wgpath.Server4.String() {
		t.Fatalf("offer %v", offer)
	}
	other, _ := wgpath.NewPrivateKey()
	otherPub := other.Public()
	if _, err := ada.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: otherPub[:]}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second key for the session: %v, want FailedPrecondition", err)
	}

	c, tnet := wgLaptop(t, ctx, offer, priv, nil)

	conn, err := tnet.DialContextTCPAddrPort(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo over WireGuard: %q %v", buf, err)
	}
	if n := testutil.ToFloat64(m.metrics.streams.WithLabelValues("tcp")); n != 1 {
		t.Errorf("the manager counted %v TCP streams, want 1", n)
	}

	sess.Close() // the session ends: its key and its connection with it
	eventually(t, "the peer removed", func() bool { return m.wg.srv.Peers() == 0 })
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); !isReset(err) {
		t.Errorf("the connection of an ended session: %v, want it reset", err)
	}
	eventually(t, "the path down", func() bool { return !c.Status().Up })
	if why := c.Status().Why; !strings.Contains(why, "no answer over UDP") {
		t.Errorf("why: %q", why)
	}
}

// wgLaptop is a laptop on the WireGuard path that offer describes: a
// userspace "kernel" whose TUN device the split serves, and its client,
// up when wgLaptop returns. handle serves the manager's connections (nil:
// none). The client runs until ctx ends; wait for it with t's cleanup.
func wgLaptop(t *testing.T, ctx context.Context, offer *managerpb.WireGuardOffer, priv wgpath.Key, handle func(net.Conn)) (*wgpath.Client, *wgnet.Net) {
	t.Helper()
	dev, tnet, err := wgnet.CreateNetTUN([]netip.Addr{netip.MustParseAddr("10.210.0.2")}, nil, 65520)
	if err != nil {
		t.Fatal(err)
	}
	split := wgpath.NewSplit(slog.Default(), dev, nil)
	st, err := netstack.New(slog.Default(), split.Stack(), noStreams{t}, netstack.Config{})
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	// The device first, while the stack still reads it (see wgpath's tests).
	t.Cleanup(func() { dev.Close(); st.Close() })
	serverKey, _ := wgpath.ParseKey(offer.GetPublicKey())
	a4, _ := netip.ParseAddr(offer.GetAddress())
	c, err := split.NewClient(slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	done := make(chan struct{})
	go func() {
		c.Run(ctx, wgpath.Offer{ServerKey: serverKey, Addr4: a4, Server4: wgpath.Server4,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort(offer.GetEndpoints()[0])}}, priv, handle)
		close(done)
	}()
	t.Cleanup(func() { <-done })
	eventually(t, "the path up", func() bool { return c.Status().Up })
	return c, tnet
}

// wgServing is a manager (identities faked) serving the WireGuard path
// with its own loopback port as the endpoint it offers; it ends with t.
func wgServing(t *testing.T) *Manager {
	t.Helper()
	m, _ := newTestManager(t, nil)
	m.identify = fakeIdentify
	var port int
	if err := m.useWireGuard(0, func(context.Context) ([]string, error) {
		return []string{fmt.Sprintf("127.0.0.1:%d", port)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	port = m.wg.srv.Port()
	t.Cleanup(m.closeWireGuard)
	return m
}

// wgManager is a manager serving the WireGuard path on loopback with ada's
// verified session on it; both end with t.
func wgManager(t *testing.T, ctx context.Context) (*Manager, *yamux.Session, managerpb.ManagerClient) {
	t.Helper()
	m := wgServing(t)
	sess := laptop(t, serve(t, m))
	ada := controlClient(t, sess)
	if _, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: "proof-ada"}); err != nil {
		t.Fatal(err)
	}
	return m, sess, ada
}

// wgAdmit asks for ada's WireGuard path with a new key; it returns the
// offer, the key, and the manager's session that holds the path.
func wgAdmit(t *testing.T, ctx context.Context, m *Manager, ada managerpb.ManagerClient) (*managerpb.WireGuardOffer, wgpath.Key, *session) {
	t.Helper()
	k, _ := wgpath.NewPrivateKey()
	pub := k.Public()
	offer, err := ada.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: pub[:]})
	if err != nil {
		t.Fatal(err)
	}
	m.wg.mu.RLock()
	s := m.wg.byAddr[netip.MustParseAddr(offer.GetAddress())]
	m.wg.mu.RUnlock()
	if s == nil {
		t.Fatal("the admitted session has no address")
	}
	return offer, k, s
}

// TestWireGuardOneKeyPerSession: calls made at once on one session admit
// one key; the session's end removes it, and no other is left behind.
func TestWireGuardOneKeyPerSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, sess, ada := wgManager(t, ctx)
	results := make(chan error, 8)
	for range 8 {
		go func() {
			k, _ := wgpath.NewPrivateKey()
			pub := k.Public()
			_, err := ada.WireGuard(ctx, &managerpb.WireGuardRequest{PublicKey: pub[:]})
			results <- err
		}()
	}
	admitted := 0
	for range 8 {
		if err := <-results; err == nil {
			admitted++
		} else if status.Code(err) != codes.FailedPrecondition && status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a call: %v", err)
		}
	}
	if admitted != 1 || m.wg.srv.Peers() != 1 {
		t.Errorf("%d calls admitted, %d peers: want 1", admitted, m.wg.srv.Peers())
	}
	sess.Close()
	eventually(t, "no peer left", func() bool { return m.wg.srv.Peers() == 0 })
}

// TestWireGuardSendBudget: a session's first connections get the most a
// connection may keep unacknowledged, later ones their share of the
// budget, never less than the floor; all of a session's connections
// together hold a fifth of what 1 MiB each held.
func TestWireGuardSendBudget(t *testing.T) {
	for _, tc := range []struct {
		open int32
		want int
	}{{1, 4 << 20}, {4, 4 << 20}, {8, 2 << 20}, {16, 1 << 20}, {128, 128 << 10}, {1024, 128 << 10}, {0, 4 << 20}} {
		if got := wgSendBuffer(tc.open); got != tc.want {
			t.Errorf("connection %d: %d, want %d", tc.open, got, tc.want)
		}
	}
	total := 0
	for n := int32(1); n <= 1024; n++ {
		total += wgSendBuffer(n)
	}
	if total > 200<<20 {
		t.Errorf("1024 connections hold %d MiB", total>>20)
	}
}

// TestWireGuardDialer tries, at the manager's dialer for the WireGuard
// path, what a laptop could send through its tunnel: a connection from
// its own address gets its share of the send budget and gives it back on
// close; one to another laptop's tunnel address (its intercept port) is
// refused and counted for the laptop's status; one from an address no
// session holds is refused; past the session's pending bound the SYN is
// dropped for a resend; and no intercept goes to a laptop that has not
// offered to take them.
func TestWireGuardDialer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, _, ada := wgManager(t, ctx)
	echo, _ := echoTCP(t)
	dial := m.dialTCP
	m.dialTCP = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) { return dial(ctx, echo) }
	offer, _, s := wgAdmit(t, ctx, m, ada)
	a4 := netip.MustParseAddr(offer.GetAddress())
	d := wgDialer{m}
	src := netip.AddrPortFrom(a4, 40000)
	svc := netip.MustParseAddrPort("10.96.0.10:80")

	var conns []net.Conn
	for range 5 {
		c, err := d.DialStream(ctx, rpc.KindTCP, src, svc)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, want := range []int{4 << 20, 4 << 20, 4 << 20, 4 << 20, 16 << 20 / 5} {
		if got := conns[i].(interface{ SendBuffer() int }).SendBuffer(); got != want {
			t.Errorf("connection %d: send buffer %d, want %d", i+1, got, want)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if n := s.wgOpen.Load(); n != 0 {
		t.Errorf("%d connections still counted open after closing all", n)
	}

	victim := netip.AddrPortFrom(netip.MustParseAddr("198.19.0.3"), wgpath.InterceptPort)
	if _, err := d.DialStream(ctx, rpc.KindTCP, src, victim); !errors.Is(err, rpc.StatusForbidden) {
		t.Errorf("to another laptop's intercept port: %v, want forbidden", err)
	}
	if f, r := s.wgFailed.Load(), s.wgRefused.Load(); f != 1 || r != 1 {
		t.Errorf("counted %d failed, %d refused; want 1 and 1", f, r)
	}
	if _, err := d.DialStream(ctx, rpc.KindTCP, netip.AddrPortFrom(a4.Next(), 40000), svc); !errors.Is(err, rpc.StatusForbidden) {
		t.Errorf("from an address no session holds: %v, want forbidden", err)
	}
	s.wgPending.Store(wgPendingPerSession)
	if _, err := d.DialStream(ctx, rpc.KindTCP, src, svc); !errors.Is(err, netstack.ErrBusy) {
		t.Errorf("past the pending bound: %v, want ErrBusy", err)
	}
	s.wgPending.Store(0)
	// A dial that was tried and failed would set wgLaptopAfter: none is
	// tried at all.
	if c := m.laptopOverWireGuard(ctx, s); c != nil || s.wgLaptopAfter.Load() != 0 {
		t.Error("the manager dialed a laptop that never offered to take intercepts")
	}
}

// TestWireGuardInterceptEndsWhenTheLaptopFallsSilent: an intercepted
// connection the manager opened to a laptop over WireGuard is reset once
// the laptop stops probing, so the sidecar's requests on it fail over
// rather than hang while TCP resends into a dead path.
func TestWireGuardInterceptEndsWhenTheLaptopFallsSilent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, _, ada := wgManager(t, ctx)
	offer, priv, s := wgAdmit(t, ctx, m, ada)
	a4 := netip.MustParseAddr(offer.GetAddress())

	c, _ := wgLaptop(t, ctx, offer, priv, func(c net.Conn) { io.Copy(c, c); c.Close() })
	eventually(t, "the laptop takes intercepts", func() bool { return m.wg.srv.Live(a4) })
	conn := m.laptopOverWireGuard(ctx, s)
	if conn == nil {
		t.Fatal("no connection to a live laptop")
	}
	defer conn.Close()
	buf := make([]byte, 4)
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("to the laptop: %v", err)
	}

	// The laptop's path goes silent (its WireGuard device closes: no more
	// probes, and not a packet of the connection's end); the session, over
	// its port-forward, stays.
	c.Close()
	// The laptop is called silent after 3 s without a probe; TCP's own
	// keepalives would take 10 s, which this deadline does not wait for.
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(7 * time.Second))
	_, err := conn.Read(buf)
	if !isReset(err) {
		t.Fatalf("the connection to a silent laptop: %v after %s, want a reset", err, time.Since(start))
	}
	t.Logf("reset %s after the laptop fell silent: %v", time.Since(start).Round(100*time.Millisecond), err)
}

// isReset says whether err ended a connection abruptly: neither a
// timeout nor the other end's orderly close.
func isReset(err error) bool {
	var ne net.Error
	return err != nil && !errors.Is(err, io.EOF) && !(errors.As(err, &ne) && ne.Timeout())
}
