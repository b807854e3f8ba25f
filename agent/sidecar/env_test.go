package sidecar

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// The data-path tests run a capture against a real app on 127.0.0.1 and a
// fake manager on the other end of the link's yamux session (over an
// in-memory pipe), which answers each intercept's streams as the laptop
// would: serving HTTP, echoing, or refusing.

const testPort = 8080 // the app port the intercepts name

// hit is one request an HTTP server (the app or the laptop) received.
type hit struct{ method, path, dev, body, xff string }

type env struct {
	t          *testing.T
	link       *link
	cp         *capture
	addr       string   // the capture's listen address
	appHits    chan hit // requests the HTTP app served
	laptopHits chan hit // requests the laptop served
	refused    chan []byte
	laptopLn   *connListener

	mu    sync.Mutex // guards following
	modes map[uint64]func(*yamux.Stream)
}

// testLog writes to the test's log until the test ends; a goroutine that
// outlives the test (a relay winding down) is silenced then.
func testLog(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex // guards done
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// newEnv starts a capture whose app is an HTTP server answering "app", or
// with echoApp a TCP server that writes "app:" and echoes.
func newEnv(t *testing.T, echoApp bool) *env {
	t.Helper()
	e := &env{t: t, appHits: make(chan hit, 100), laptopHits: make(chan hit, 100), refused: make(chan []byte, 10),
		modes: map[uint64]func(*yamux.Stream){}}
	var app netip.AddrPort
	if echoApp {
		app = testnet.ServeTCP(t, func(c *net.TCPConn) { prefixEcho(c, "app:") })
	} else {
		app = serveHTTP(t, "app", e.appHits)
	}
	log := testLog(t)

	// The link's session: the sidecar is the yamux client, as in link.session.
	a, b := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	client, err := yamux.Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	server, err := yamux.Server(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.link = &link{log: log, ns: "shop", name: "web", pod: "web-1", mux: client}

	// The laptop's HTTP server, fed the streams the fake manager accepts.
	e.laptopLn = newConnListener(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	laptopSrv := &http.Server{Handler: recorder("laptop", e.laptopHits)}
	var wg sync.WaitGroup
	wg.Go(func() { _ = laptopSrv.Serve(e.laptopLn) })
	wg.Go(func() { e.manage(server, &wg) })

	m := newMetrics()
	e.cp = &capture{log: log, app: app, port: testPort, link: e.link, metrics: m,
		direct: newDirect(log, e.link, "web-1"), sniff: 50 * time.Millisecond, pod: "web-1", buffers: &relay.Buffers{Size: ioBuffer}}
	e.cp.http = newHTTPMode(log, e.cp, e.cp.metrics)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.cp.serve(ctx, ln) }()

	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("capture serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("capture serve did not return")
		}
		client.Close()
		server.Close()
		e.laptopLn.Close()
		laptopSrv.Close()
		for _, tr := range e.cp.http.app {
			tr.CloseIdleConnections()
		}
		e.cp.http.forget(nil)
		testnet.Wait(t, &wg, "the fake manager")
	})
	return e
}

// manage plays the manager: each stream's header names an intercept, whose
// mode answers it; an unknown one is unreachable.
func (e *env) manage(sess *yamux.Session, wg *sync.WaitGroup) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		wg.Go(func() {
			_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
			h, err := rpc.ReadHeader(st)
			_ = st.SetReadDeadline(time.Time{})
			e.mu.Lock()
			mode := e.modes[h.Flow]
			e.mu.Unlock()
			if err != nil || h.Kind != rpc.KindIntercept || mode == nil {
				_, _ = st.Write([]byte{byte(rpc.StatusUnreachable)})
				st.Close()
				return
			}
			mode(st)
		})
	}
}

// set makes ics the link's intercepts, answered by their modes, and reaps
// as the link does after a change.
func (e *env) set(ics ...*managerpb.Intercept) {
	e.link.table.Store(newTable(ics))
	e.cp.reap()
	e.cp.direct.reap()
}

func (e *env) answer(id uint64, mode func(*yamux.Stream)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.modes[id] = mode
}

// serveHTTPMode: the laptop accepts and serves HTTP on the stream.
func (e *env) serveHTTPMode(st *yamux.Stream) {
	if _, err := st.Write([]byte{byte(rpc.StatusOK)}); err != nil {
		st.Close()
		return
	}
	e.laptopLn.deliver(st)
}

// echoMode: the laptop accepts, writes "laptop:" and echoes.
func echoMode(st *yamux.Stream) {
	if _, err := st.Write([]byte{byte(rpc.StatusOK)}); err == nil {
		prefixEcho(st, "laptop:")
	}
	st.Close()
}

// refuseMode: nothing listens on the laptop; it answers after reading want
// bytes of the connection (sent ahead of the answer) and reports them.
func (e *env) refuseMode(want int) func(*yamux.Stream) {
	return func(st *yamux.Stream) {
		defer st.Close()
		got := make([]byte, want)
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.ReadFull(st, got)
		select {
		case e.refused <- got[:n]:
		default:
		}
		_, _ = st.Write([]byte{byte(rpc.StatusRefused)})
	}
}

func prefixEcho(c net.Conn, prefix string) {
	if _, err := io.WriteString(c, prefix); err == nil {
		_, _ = io.Copy(c, c)
	}
}

func intercept(id uint64, name string, mode managerpb.InterceptMode) *managerpb.Intercept {
	return &managerpb.Intercept{Id: id, User: "ada", Spec: &managerpb.InterceptSpec{
		Name: name, Namespace: "shop", Workload: "web", Port: testPort, Mode: mode, LaptopId: id * 10}}
}

// request sends one HTTP/1.1 request to the capture on a fresh connection.
func (e *env) request(method, body string, header ...string) (int, string, http.Header) {
	e.t.Helper()
	req, err := http.NewRequest(method, "http://"+e.addr+"/orders", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		e.t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s: read the body: %v", method, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// dialRaw opens a connection to the capture and sends first.
func (e *env) dialRaw(first string) net.Conn {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, first); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// readN reads exactly n bytes of c.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	if got, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %q: %v", b[:got], err)
	}
	return string(b)
}

// next waits for one hit.
func next(t *testing.T, ch <-chan hit, who string) hit {
	t.Helper()
	select {
	case h := <-ch:
		return h
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for a request at the %s", who)
		return hit{}
	}
}

// none checks that ch holds no hit.
func none(t *testing.T, ch <-chan hit, who string) {
	t.Helper()
	select {
	case h := <-ch:
		t.Errorf("the %s got %+v, want nothing", who, h)
	default:
	}
}

// recorder answers every request with name and reports it on hits.
func recorder(name string, hits chan<- hit) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hits <- hit{r.Method, r.URL.Path, r.Header.Get("X-Dev"), string(b), r.Header.Get("X-Forwarded-For")}
		_, _ = io.WriteString(w, name)
	})
}

// serveHTTP runs an HTTP server answering name on 127.0.0.1 until the test ends.
func serveHTTP(t *testing.T, name string, hits chan<- hit) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: recorder(name, hits)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// closed waits until c is closed by the other side (EOF or a reset).
func closed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection is still open")
	}
}

// waitLong is every wait's limit.
func waitLong() <-chan time.Time { return time.After(5 * time.Second) }
