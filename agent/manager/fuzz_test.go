package manager

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"tunnel.dev/tunnel/rpc"
)

// FuzzReadHeader drives arbitrary stream openings through a running
// manager's stream handling (rpc.ReadHeader, the policy, the dispatch to
// gRPC, TCP and UDP) and checks that every stream ends, that only a good
// header gets an answer and the right one, and that the session survives.
// Dials are faked: fuzzed destinations never reach the network.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte{rpc.Version, byte(rpc.KindControl), 0})
	f.Add(rpc.AppendHeader(nil, rpc.Header{Kind: rpc.KindTCP, Dst: netip.MustParseAddrPort("10.96.0.10:80"), Flow: 1}))
	f.Add(rpc.AppendHeader(nil, rpc.Header{Kind: rpc.KindUDP, Dst: netip.MustParseAddrPort("[fd00::a]:53"), Flow: 2}))
	f.Add(rpc.AppendHeader(nil, rpc.Header{Kind: rpc.KindTCP, Dst: netip.MustParseAddrPort("169.254.169.254:80"), Flow: 3}))
	f.Add([]byte{rpc.Version, byte(rpc.KindTCP), 16, 0xfe, 0x80})
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))

	m, _ := newTestManager(f, func(c *Config) {
		c.AllowLoopback = false
		c.HeaderTimeout = 2 * time.Second
	})
	m.dialTCP = func(context.Context, netip.AddrPort) (net.Conn, error) { return nil, syscall.ECONNREFUSED }
	m.dialUDP = func(context.Context, netip.AddrPort) (net.Conn, error) { return nil, syscall.ENETUNREACH }
	sess := laptop(f, serve(f, m))

	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatalf("the session died: %v", err)
		}
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Write(data); err != nil {
			t.Fatal(err)
		}
		st.Close() // our side is done; the manager must end the stream
		got, err := io.ReadAll(st)
		if err != nil {
			t.Fatalf("the stream did not end: %v", err)
		}

		h, herr := rpc.ReadHeader(bytes.NewReader(data))
		switch {
		case herr != nil:
			if len(got) != 0 {
				t.Errorf("a bad header (%v) was answered with %v", herr, got)
			}
		case h.Kind == rpc.KindTCP || h.Kind == rpc.KindUDP:
			want := rpc.StatusRefused
			if h.Kind == rpc.KindUDP {
				want = rpc.StatusUnreachable
			}
			if forbidden(h.Dst.Addr(), false) {
				want = rpc.StatusForbidden
			}
			if len(got) != 1 || rpc.Status(got[0]) != want {
				t.Errorf("%s stream to %s answered %v, want [%d]", h.Kind, h.Dst, got, want)
			}
		}
		if sess.IsClosed() {
			t.Fatal("the session died")
		}
	})
}
