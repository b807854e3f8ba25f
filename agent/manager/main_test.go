package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// klog's flush daemon and the fake clientset's watch plumbing are
		// process-wide and outlive any one test.
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
	)
}

// testLogger writes to the test's log, so a failure shows what the manager
// said; a fuzz target may not log through its F, so there it discards.
func testLogger(t testing.TB) *slog.Logger {
	if _, fuzz := t.(*testing.F); fuzz {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// writeResolvConf writes a resolv.conf naming servers, kubelet style.
func writeResolvConf(t testing.TB, servers ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("search tunnel-system.svc.cluster.test svc.cluster.test cluster.test\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	b.WriteString("options ndots:5\n")
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testCluster is the StaticSource's first value in tests.
func testCluster() Cluster {
	return Cluster{
		ServiceSubnets: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		PodSubnets:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Namespaces:     []string{"default", "shop"},
	}
}

// newTestManager returns a Manager with loopback allowed (unless cfg says
// otherwise through mod), a StaticSource and a DNS server of its own. Every
// dial it makes is checked to stay on loopback.
// testHeaders are what the tests' personal intercepts may match on.
var testHeaders = []string{"x-dev", "x-tunnel-*"}

func newTestManager(t testing.TB, mod func(*Config)) (*Manager, *StaticSource) {
	t.Helper()
	cfg := Config{
		ResolvConf:     writeResolvConf(t, startDNS(t, testDNSHandler)),
		AllowLoopback:  true,
		UDPIdleTimeout: 5 * time.Second,
		HeaderTimeout:  5 * time.Second,
		DNSTimeout:     time.Second,
		// The tests' personal intercepts match on X-Dev.
		InterceptHeaders: testHeaders,
	}
	if mod != nil {
		mod(&cfg)
	}
	src := NewStaticSource(testCluster())
	m, err := New(testLogger(t), src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	guardDials(t, m)
	return m, src
}

// guardDials fails the test if the manager dials anything but loopback.
func guardDials(t testing.TB, m *Manager) {
	tcp, udp := m.dialTCP, m.dialUDP
	guard := func(dial func(context.Context, netip.AddrPort) (net.Conn, error)) func(context.Context, netip.AddrPort) (net.Conn, error) {
		return func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
			if !dst.Addr().IsLoopback() {
				t.Errorf("the manager dialed %s, off loopback", dst)
				return nil, syscall.ENETUNREACH
			}
			return dial(ctx, dst)
		}
	}
	m.dialTCP, m.dialUDP = guard(tcp), guard(udp)
}

// serve runs m on 127.0.0.1:0 until the test ends and returns its address.
// The test fails if Serve does not return nil once canceled.
func serve(t testing.TB, m *Manager) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

// laptop opens a yamux client session to addr, as the daemon does.
func laptop(t testing.TB, addr string) *yamux.Session {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// openStream opens a stream and writes h.
func openStream(t testing.TB, sess *yamux.Session, h rpc.Header) *yamux.Stream {
	t.Helper()
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := rpc.WriteHeader(st, h); err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(10 * time.Second)) // no test hangs on a stream
	return st
}

// dialStream opens a TCP or UDP stream and returns the manager's answer.
func dialStream(t testing.TB, sess *yamux.Session, kind rpc.Kind, dst netip.AddrPort) (*yamux.Stream, error) {
	t.Helper()
	st := openStream(t, sess, rpc.Header{Kind: kind, Dst: dst, Flow: 1})
	return st, rpc.ReadStatus(st)
}

// controlClient is a gRPC client whose connections are control streams of sess.
func controlClient(t testing.TB, sess *yamux.Session) managerpb.ManagerClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///manager",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			st, err := sess.OpenStream()
			if err != nil {
				return nil, err
			}
			if err := rpc.WriteHeader(st, rpc.Header{Kind: rpc.KindControl}); err != nil {
				st.Close()
				return nil, err
			}
			return st, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return managerpb.NewManagerClient(cc)
}

// --- cluster-side test servers, all on 127.0.0.1 ---

// startDNS serves handler over UDP and TCP on one 127.0.0.1 port.
func startDNS(t testing.TB, handler dns.HandlerFunc) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ; i++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if i == 20 {
			t.Fatalf("no port free for both UDP and TCP: %v", err)
		}
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return pc.LocalAddr().String()
}

// testDNSHandler answers like a small cluster DNS:
//   - orders.shop.svc.cluster.test. A → 10.96.0.42, TTL 42;
//   - big.test. → truncated over UDP, 100 A records over TCP;
//   - anything else → NXDOMAIN.
func testDNSHandler(w dns.ResponseWriter, q *dns.Msg) {
	r := new(dns.Msg)
	r.SetReply(q)
	name := q.Question[0].Name
	_, overUDP := w.RemoteAddr().(*net.UDPAddr)
	switch {
	case name == "orders.shop.svc.cluster.test." && q.Question[0].Qtype == dns.TypeA:
		rr, _ := dns.NewRR("orders.shop.svc.cluster.test. 42 IN A 10.96.0.42")
		r.Answer = append(r.Answer, rr)
	case name == "big.test." && overUDP:
		r.Truncated = true
	case name == "big.test.":
		for i := range 100 {
			rr, _ := dns.NewRR(fmt.Sprintf("big.test. 300 IN A 10.0.%d.%d", i/250, i%250+1))
			r.Answer = append(r.Answer, rr)
		}
	default:
		r.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(r)
}

// echoTCP accepts connections on 127.0.0.1 and echoes them until EOF, then
// closes. It counts connections.
func echoTCP(t testing.TB) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	addr := testnet.ServeTCP(t, func(c *net.TCPConn) {
		n.Add(1)
		_, _ = io.Copy(c, c)
	})
	return addr, &n
}

// echoUDP echoes datagrams on 127.0.0.1 until the test ends.
func echoUDP(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, rpc.MaxDatagram)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				_, _ = pc.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// closedPort returns a 127.0.0.1 TCP port nobody listens on.
func closedPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return addr
}

// eventually polls cond for up to 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
