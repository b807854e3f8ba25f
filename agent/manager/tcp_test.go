package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/rpc"
)

func TestTCPEcho(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	echo, _ := echoTCP(t)

	st, err := dialStream(t, sess, rpc.KindTCP, echo)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: several windows
	go func() { _, _ = st.Write(payload) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Error("echo differs from what was sent")
	}
}

func TestTCPLaptopHalfCloseStillGetsAnswer(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	// The server reads the whole request, then answers and closes: it only
	// answers once it has seen the laptop's EOF.
	srv := testnet.ServeTCP(t, func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes: %s", len(req), req)
	})

	st, err := dialStream(t, sess, rpc.KindTCP, srv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil { // yamux Close: our side stops writing, keeps reading
		t.Fatal(err)
	}
	answer, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if string(answer) != "got 5 bytes: hello" {
		t.Errorf("answer %q", answer)
	}
}

func TestTCPClusterHalfCloseStillTakesRequest(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	// The server greets and shuts down its side at once, then reads on.
	got := make(chan string, 1)
	srv := testnet.ServeTCP(t, func(c *net.TCPConn) {
		_, _ = c.Write([]byte("bye"))
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})

	st, err := dialStream(t, sess, rpc.KindTCP, srv)
	if err != nil {
		t.Fatal(err)
	}
	greeting, err := io.ReadAll(st) // ends at the manager's half-close
	if err != nil || string(greeting) != "bye" {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	if _, err := st.Write([]byte("still here")); err != nil {
		t.Fatalf("writing after the cluster's EOF: %v", err)
	}
	st.Close()
	if s := <-got; s != "still here" {
		t.Errorf("server read %q after its half-close", s)
	}
}

func TestTCPRefused(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	_, err := dialStream(t, sess, rpc.KindTCP, closedPort(t))
	if !errors.Is(err, rpc.StatusRefused) {
		t.Errorf("dial of a closed port: %v, want %v", err, rpc.StatusRefused)
	}
}

func TestTCPUnreachable(t *testing.T) {
	m, _ := newTestManager(t, nil)
	m.dialTCP = func(context.Context, netip.AddrPort) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	sess := laptop(t, serve(t, m))
	_, err := dialStream(t, sess, rpc.KindTCP, netip.MustParseAddrPort("127.0.0.1:1"))
	if !errors.Is(err, rpc.StatusUnreachable) {
		t.Errorf("timed-out dial: %v, want %v", err, rpc.StatusUnreachable)
	}
}

func TestTCPForbiddenDestinations(t *testing.T) {
	echo, conns := echoTCP(t)
	for _, tc := range []struct {
		allowLoopback bool
		dst           netip.AddrPort
		want          error
	}{
		{false, echo, rpc.StatusForbidden}, // production: the manager's own pod is off limits
		{true, echo, nil},                  // tests may reach loopback
		{false, netip.MustParseAddrPort("169.254.169.254:80"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("169.254.169.254:80"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("[fe80::1]:80"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("0.0.0.0:80"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("224.0.0.1:80"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("[::ffff:169.254.169.254]:80"), rpc.StatusForbidden},
	} {
		t.Run(fmt.Sprintf("%s/allowLoopback=%v", tc.dst, tc.allowLoopback), func(t *testing.T) {
			m, _ := newTestManager(t, func(c *Config) { c.AllowLoopback = tc.allowLoopback })
			sess := laptop(t, serve(t, m))
			before := conns.Load()
			_, err := dialStream(t, sess, rpc.KindTCP, tc.dst)
			if !errors.Is(err, tc.want) && err != tc.want {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if tc.want != nil && conns.Load() != before {
				t.Error("a forbidden destination was dialed")
			}
		})
	}
}

func TestTCPManyStreamsAtOnce(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	echo, conns := echoTCP(t)

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			st, err := dialStream(t, sess, rpc.KindTCP, echo)
			if err != nil {
				t.Error(err)
				return
			}
			msg := fmt.Appendf(nil, "stream %d", i)
			if _, err := st.Write(msg); err != nil {
				t.Error(err)
				return
			}
			st.Close()
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("stream %d: %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	if conns.Load() != 20 {
		t.Errorf("%d connections, want 20", conns.Load())
	}
}

func TestTCPSessionEndClosesClusterSide(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	closed := make(chan struct{})
	srv := testnet.ServeTCP(t, func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c) // until the manager lets go
		close(closed)
	})
	st, err := dialStream(t, sess, rpc.KindTCP, srv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	sess.Close() // the laptop vanishes without closing its stream
	<-closed
}
