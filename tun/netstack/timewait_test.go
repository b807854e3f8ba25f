package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// dialFrom connects from the fixed local address src of the client stack
// s to dst. A src port still held by the client's previous connection (in
// LAST-ACK until the peer acknowledges its FIN) is retried until ctx ends.
func dialFrom(ctx context.Context, s *stack.Stack, src, dst netip.AddrPort) (*gonet.TCPConn, error) {
	laddr, proto := fullAddr(src)
	laddr.NIC = 0
	raddr, _ := fullAddr(dst)
	raddr.NIC = 0
	var wq waiter.Queue
	ep, tcpErr := s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if tcpErr != nil {
		return nil, fmt.Errorf("new endpoint: %s", tcpErr)
	}
	fail := func(err error) (*gonet.TCPConn, error) {
		ep.Close()
		return nil, err
	}
	for {
		tcpErr = ep.Bind(laddr)
		if tcpErr == nil {
			break
		}
		if _, ok := tcpErr.(*tcpip.ErrPortInUse); !ok {
			return fail(fmt.Errorf("bind %s: %s", src, tcpErr))
		}
		select {
		case <-ctx.Done():
			return fail(fmt.Errorf("bind %s: %s: %w", src, tcpErr, ctx.Err()))
		case <-time.After(time.Millisecond):
		}
	}
	entry, writable := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	tcpErr = ep.Connect(raddr)
	if _, ok := tcpErr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			return fail(fmt.Errorf("connect %s -> %s: %w", src, dst, ctx.Err()))
		case <-writable:
		}
		tcpErr = ep.LastError()
	}
	if tcpErr != nil {
		return fail(fmt.Errorf("connect %s -> %s: %s", src, dst, tcpErr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// redial connects src to dst within reuseWithin, trying again when the
// stack's end of the previous connection from src resets the SYN.
func redial(s *stack.Stack, src, dst netip.AddrPort) (*gonet.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), reuseWithin)
	defer cancel()
	for {
		conn, err := dialFrom(ctx, s, src, dst)
		if err == nil || !strings.Contains(err.Error(), (&tcpip.ErrConnectionRefused{}).String()) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// reuseWithin is how soon a reused source port must connect: a few SYN
// retransmissions, far less than gVisor's default minute of TIME-WAIT,
// in which every SYN was dropped.
const reuseWithin = 5 * time.Second

// A client that reuses its source port right after a connection the
// cluster side closed first connects again within seconds, not a minute.
// (A SYN that meets the old connection's last moments is dropped, and
// connects on its retransmission a second later, or is reset, and the
// client tries again: redial allows for both.) The stack's end of
// that connection closed first, so it sits in TIME-WAIT; gVisor hands a
// new SYN for a 4-tuple in TIME-WAIT only to a listening endpoint, never
// to the forwarder, so with the default minute of TIME-WAIT the SYN (and
// every retransmission) was dropped and the connect hung.
func TestTCPReuseSourcePortAfterServerClose(t *testing.T) {
	for _, tc := range []struct {
		src, dst netip.AddrPort
	}{
		{netip.AddrPortFrom(clientV4, 40000), svcV4},
		{netip.AddrPortFrom(clientV6, 40000), svcV6},
	} {
		t.Run(tc.dst.Addr().String(), func(t *testing.T) {
			t.Parallel()
			// Answers one request, then closes: the server closes first.
			d := &fakeDialer{tcp: serveTCP(t, func(c *net.TCPConn) {
				req := make([]byte, len("ping 0"))
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				c.Write([]byte("pong" + string(req[len("ping"):])))
			})}
			h := newHarness(t, Config{}, d)

			var closed time.Time
			for i := range 3 {
				start := time.Now()
				conn, err := redial(h.client.stack, tc.src, tc.dst)
				if err != nil {
					if i > 0 && errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("connection %d from the reused source port %s, started %v after the last one closed: %v "+
							"(%d dials: the SYN never reached the forwarder, so the stack's endpoint in TIME-WAIT dropped it)",
							i, tc.src, start.Sub(closed), err, len(d.dialed()))
					}
					t.Fatalf("connection %d: %v", i, err)
				}
				if i > 0 {
					t.Logf("connection %d: started %v after the last close, connected in %v",
						i, start.Sub(closed), time.Since(start))
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := fmt.Fprintf(conn, "ping %d", i); err != nil {
					conn.Close()
					t.Fatalf("connection %d: write: %v", i, err)
				}
				// ReadAll returns at the FIN the stack forwards from the
				// server's close, before the client closes.
				got, err := io.ReadAll(conn)
				if err != nil || string(got) != fmt.Sprintf("pong %d", i) {
					conn.Close()
					t.Fatalf("connection %d: read %q, %v; want %q and EOF", i, got, err, fmt.Sprintf("pong %d", i))
				}
				if err := conn.Close(); err != nil {
					t.Fatalf("connection %d: close: %v", i, err)
				}
				closed = time.Now()
			}
			if got := len(d.dialed()); got != 3 {
				t.Errorf("%d dials, want 3", got)
			}
		})
	}
}
