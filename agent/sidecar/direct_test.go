package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// serveDirect starts the capture's direct listener, as Run does.
func (e *env) serveDirect() string {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.cp.direct.serve(ctx, ln); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// spare opens a spare as a laptop's port-forward would and returns it with
// the sidecar's answer; an accepted one is in the sidecar's pool on return.
func spare(t *testing.T, e *env, addr string, id uint64, key []byte) (net.Conn, rpc.Status) {
	t.Helper()
	return spareFor(t, e, addr, id, key, "web-1")
}

// spareFor is spare with the laptop's proof made for pod.
func spareFor(t *testing.T, e *env, addr string, id uint64, key []byte, pod string) (net.Conn, rpc.Status) {
	t.Helper()
	before := e.cp.direct.count(id)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// The laptop's side, proving key whatever the sidecar proves: what a
	// stranger with a key of their own would do.
	nl := bytes.Repeat([]byte("n"), rpc.DirectNonceLen)
	if err := rpc.WriteDirectHello(c, rpc.DirectHello{Intercept: id, Nonce: nl}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return c, rpc.StatusUnreachable
	}
	if rpc.Status(b[0]) == rpc.StatusOK {
		var rest [rpc.DirectNonceLen + rpc.DirectProofLen]byte
		if _, err := io.ReadFull(c, rest[:]); err != nil {
			t.Fatalf("the sidecar's proof: %v", err)
		}
		ns, proof := rest[:rpc.DirectNonceLen], rest[rpc.DirectNonceLen:]
		if !rpc.CheckDirectProof(proof, e.cp.direct.link.intercept(id).GetDirectKey(), rpc.DirectSidecar, "web-1", id, nl, ns) {
			t.Error("the sidecar's proof does not show the intercept's key for its pod")
		}
		if _, err := c.Write(rpc.DirectProof(key, rpc.DirectLaptop, pod, id, nl, ns)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(b[:]); err != nil {
			return c, rpc.StatusUnreachable
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	if rpc.Status(b[0]) == rpc.StatusOK {
		// The answer goes out just before the spare joins the pool.
		for deadline := time.Now().Add(5 * time.Second); e.cp.direct.count(id) <= before; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("an accepted spare never joined the pool")
			}
		}
	}
	return c, rpc.Status(b[0])
}

func (d *direct) count(id uint64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.spares[id])
}

// directEnv is a capture with its direct listener and a global intercept
// g, whose laptop answers through the manager too.
func directEnv(t *testing.T) (e *env, addr string, g *managerpb.Intercept) {
	e = newEnv(t, false)
	addr = e.serveDirect()
	g = intercept(1, "g", managerpb.InterceptMode_GLOBAL)
	g.DirectKey = bytes.Repeat([]byte("k"), rpc.DirectKeyLen)
	e.answer(1, e.serveHTTPMode)
	e.set(g)
	return e, addr, g
}

// serveSpare plays the laptop on a taken spare: it reads the header, says
// OK and answers one HTTP request with "direct".
func serveSpare(t *testing.T, c net.Conn, headers chan<- rpc.Header) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := rpc.ReadHeader(c)
	if err != nil {
		t.Errorf("the spare's header: %v", err)
		return
	}
	headers <- h
	if _, err := c.Write([]byte{byte(rpc.StatusOK)}); err != nil {
		return
	}
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		t.Errorf("the request on the spare: %v", err)
		return
	}
	resp := &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
		Body: http.NoBody, ContentLength: 6, Request: req}
	resp.Body = nopBody{strings.NewReader("direct")}
	_ = resp.Write(c)
}

type nopBody struct{ *strings.Reader }

func (nopBody) Close() error { return nil }

func TestHTTPTakesALaptopsSpareBeforeTheManager(t *testing.T) {
	e, addr, g := directEnv(t)

	// Wrong keys, unknown intercepts and strangers' bytes get no spare; a
	// proof made for another pod neither (a look-alike relaying the
	// handshake).
	if _, st := spare(t, e, addr, 1, bytes.Repeat([]byte("x"), rpc.DirectKeyLen)); st != rpc.StatusForbidden {
		t.Errorf("a wrong key was answered %v, want forbidden", st)
	}
	if _, st := spareFor(t, e, addr, 1, g.DirectKey, "web-2"); st != rpc.StatusForbidden {
		t.Errorf("a proof for another pod was answered %v, want forbidden", st)
	}
	if _, st := spare(t, e, addr, 2, g.DirectKey); st != rpc.StatusForbidden {
		t.Errorf("another intercept's id was answered %v, want forbidden", st)
	}
	c, st := spare(t, e, addr, 1, g.DirectKey)
	if st != rpc.StatusOK {
		t.Fatalf("the laptop's spare was answered %v, want OK", st)
	}
	headers := make(chan rpc.Header, 1)
	go serveSpare(t, c, headers)

	code, body, _ := e.request("POST", "payload")
	if code != http.StatusOK || body != "direct" {
		t.Errorf("POST: %d %q, want the spare's 200 direct", code, body)
	}
	select {
	case h := <-headers:
		if h.Kind != rpc.KindIntercept || h.Flow != g.GetSpec().GetLaptopId() {
			t.Errorf("the spare's header %+v, want an intercept stream for laptop id %d", h, g.GetSpec().GetLaptopId())
		}
	case <-waitLong():
		t.Fatal("the spare was never taken")
	}
	// The spare is used up: the next connection goes through the manager.
	e.cp.http.forget(nil)
	if code, body, _ := e.request("GET", ""); code != http.StatusOK || body != "laptop" {
		t.Errorf("GET without a spare: %d %q, want the manager's laptop", code, body)
	}
	next(t, e.laptopHits, "laptop")
	for path, want := range map[string]float64{"direct": 1, "manager": 1} {
		var m dto.Metric
		if err := e.cp.metrics.laptopConns.WithLabelValues("g", path).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("laptop connections by %s: %v, want %v", path, got, want)
		}
	}
}

func TestDeadSparesAreSkippedAndEndedInterceptsLoseTheirs(t *testing.T) {
	e, addr, g := directEnv(t)
	live, _ := spare(t, e, addr, 1, g.DirectKey)
	dead, _ := spare(t, e, addr, 1, g.DirectKey)
	dead.Close() // the newest, taken first: it must be passed over
	time.Sleep(50 * time.Millisecond)
	headers := make(chan rpc.Header, 1)
	go serveSpare(t, live, headers)
	if code, body, _ := e.request("GET", ""); code != http.StatusOK || body != "direct" {
		t.Errorf("GET: %d %q, want the live spare's answer", code, body)
	}

	// An intercept that ends closes its spares: the laptop sees them go.
	other, _ := spare(t, e, addr, 1, g.DirectKey)
	e.set()
	_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := other.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("a spare of an ended intercept read %d, %v; want its end", n, err)
	}
}

func TestSparesAreBounded(t *testing.T) {
	e, addr, g := directEnv(t)
	for i := range maxSpares {
		if _, st := spare(t, e, addr, 1, g.DirectKey); st != rpc.StatusOK {
			t.Fatalf("spare %d answered %v", i, st)
		}
	}
	if _, st := spare(t, e, addr, 1, g.DirectKey); st != rpc.StatusRefused {
		t.Errorf("spare %d answered %v, want refused", maxSpares+1, st)
	}
}

func (e *env) laptopConns(path string) float64 {
	var m dto.Metric
	if err := e.cp.metrics.laptopConns.WithLabelValues("g", path).Write(&m); err != nil {
		e.t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// Once spares come, requests leave the manager's kept-alive connection.
func TestSparesTakeOverFromTheManagersConnections(t *testing.T) {
	e, addr, g := directEnv(t)
	for range 2 { // the second request reuses the manager's connection
		if code, body, _ := e.request("GET", ""); code != http.StatusOK || body != "laptop" {
			t.Fatalf("GET: %d %q, want the manager's laptop", code, body)
		}
		next(t, e.laptopHits, "laptop")
	}
	if got := e.laptopConns("manager"); got != 1 {
		t.Fatalf("%v connections through the manager, want 1 kept alive", got)
	}
	c, _ := spare(t, e, addr, 1, g.DirectKey)
	headers := make(chan rpc.Header, 1)
	go serveSpare(t, c, headers)
	if code, body, _ := e.request("GET", ""); code != http.StatusOK || body != "direct" {
		t.Errorf("GET with a spare: %d %q, want the spare's answer", code, body)
	}
	if got := e.laptopConns("manager"); got != 1 {
		t.Errorf("%v connections through the manager, want still 1", got)
	}
}

// open tells an idle spare from one whose laptop went, or that sent bytes
// it must not have, without reading from it.
func TestOpenSeesASparesEndWithoutReading(t *testing.T) {
	idle, _ := testnet.Pair(t)
	if !open(idle) {
		t.Error("an idle spare looks gone")
	}
	eventually := func(what string, c net.Conn) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); open(c); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("a spare %s still looks open", what)
			}
		}
	}
	gone, far := testnet.Pair(t)
	far.Close()
	eventually("whose far end closed", gone)
	chatty, far2 := testnet.Pair(t)
	_, _ = far2.Write([]byte("x"))
	eventually("that was sent bytes", chatty)
	if n, err := chatty.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Errorf("open consumed the byte it peeked at: read %d, %v", n, err)
	}
}
