package manager

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
	"tunnel.dev/tunnel/version"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// badHeaders are stream openings ReadHeader must refuse.
func badHeaders() map[string][]byte {
	return map[string][]byte{
		"wrong version":      {2, byte(rpc.KindTCP), 4, 127, 0, 0, 1, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1},
		"unknown kind":       {rpc.Version, 9, 0},
		"control with addr":  {rpc.Version, byte(rpc.KindControl), 4, 127, 0, 0, 1},
		"bad address length": {rpc.Version, byte(rpc.KindTCP), 5, 1, 2, 3, 4, 5, 0, 80},
		"http":               []byte("GET / HTTP/1.1\r\nHost: manager\r\n\r\n"),
		"zeros":              make([]byte, 64),
	}
}

func TestBadHeaderClosesOnlyThatStream(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	echo, _ := echoTCP(t)

	// A healthy stream, open across all the bad ones.
	good, err := dialStream(t, sess, rpc.KindTCP, echo)
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range badHeaders() {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		_ = st.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Write(raw); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(st) // no status byte, just the manager's close
		if err != nil || len(got) != 0 {
			t.Errorf("%s: read %v, %v; want a bare EOF", name, got, err)
		}
		st.Close()
	}
	for i := range 3 {
		msg := []byte{byte(i), 'x'}
		if _, err := good.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(good, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("the healthy stream broke: %q, %v", got, err)
		}
	}
	if n := metricValue(t, m, "tunnel_manager_streams_total", map[string]string{"kind": "bad"}); n != float64(len(badHeaders())) {
		t.Errorf("%v bad streams counted, want %d", n, len(badHeaders()))
	}
}

func TestTruncatedHeaderThenCloseEndsStream(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = st.Write([]byte{rpc.Version, byte(rpc.KindTCP), 4, 10})
	st.Close()
	if got, err := io.ReadAll(st); err != nil || len(got) != 0 {
		t.Errorf("read %v, %v; want a bare EOF", got, err)
	}
}

func TestSilentStreamDoesNotBlockSession(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	sess := laptop(t, serve(t, m))

	silent, err := sess.OpenStream() // says nothing at all
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetDeadline(time.Now().Add(5 * time.Second))

	// Meanwhile the session works.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := controlClient(t, sess).Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, User: "t"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got, err := io.ReadAll(silent); err != nil || len(got) != 0 {
		t.Errorf("silent stream: read %v, %v; want the manager's close", got, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent stream closed after %s, want about the header timeout", d)
	}
}

func TestGarbageConnectionLeavesOthersAlone(t *testing.T) {
	m, _ := newTestManager(t, nil)
	addr := serve(t, m)
	echo, _ := echoTCP(t)
	good := laptop(t, addr)

	raw, err := net.Dial("tcp", addr) // not yamux at all
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write(bytes.Repeat([]byte("\xff garbage \x00"), 1000))
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	// EOF or, as unread garbage is left behind, a reset; not a timeout.
	if _, err := io.Copy(io.Discard, raw); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the manager did not close a garbage connection: %v", err)
	}

	st, err := dialStream(t, good, rpc.KindTCP, echo)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = st.Write([]byte("fine"))
	st.Close()
	if b, _ := io.ReadAll(st); string(b) != "fine" {
		t.Errorf("other session: %q", b)
	}
	eventually(t, "the garbage session to end", func() bool { return gaugeValue(t, m, "tunnel_manager_sessions_active") == 1 })
}

func TestSessionsEndIndependently(t *testing.T) {
	m, _ := newTestManager(t, nil)
	addr := serve(t, m)
	echo, _ := echoTCP(t)
	a, b := laptop(t, addr), laptop(t, addr)
	eventually(t, "two sessions", func() bool { return gaugeValue(t, m, "tunnel_manager_sessions_active") == 2 })
	a.Close()
	eventually(t, "one session", func() bool { return gaugeValue(t, m, "tunnel_manager_sessions_active") == 1 })
	if _, err := dialStream(t, b, rpc.KindTCP, echo); err != nil {
		t.Errorf("the other session: %v", err)
	}
}

func TestVanishedLaptopIsNoticed(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.KeepAlive = 100 * time.Millisecond })
	addr := serve(t, m)
	// A peer that never speaks yamux, so it never answers a ping: like a
	// laptop whose port-forward died without a FIN.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	eventually(t, "the session to start", func() bool { return gaugeValue(t, m, "tunnel_manager_sessions_active") == 1 })
	eventually(t, "keepalive to end the session", func() bool { return gaugeValue(t, m, "tunnel_manager_sessions_active") == 0 })
}

func TestServeStopsOnCancel(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()

	sess := laptop(t, ln.Addr().String())
	ctl := controlClient(t, sess)
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	w, err := ctl.WatchCluster(wctx, &managerpb.WatchClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	select {
	case <-sess.CloseChan():
	case <-time.After(5 * time.Second):
		t.Error("the laptop's session outlived Serve")
	}
	if _, err := w.Recv(); err == nil {
		t.Error("the watch outlived Serve")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("the listener outlived Serve")
	}
}

func TestServeReportsListenerFailure(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // fails its Accept at once
	if err := m.Serve(context.Background(), ln); err == nil {
		t.Error("Serve on a closed listener returned nil")
	}
}
