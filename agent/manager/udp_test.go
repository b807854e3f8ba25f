package manager

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"tunnel.dev/tunnel/rpc"
)

func TestUDPEchoKeepsDatagramBoundaries(t *testing.T) {
	m, _ := newTestManager(t, nil)
	sess := laptop(t, serve(t, m))
	st, err := dialStream(t, sess, rpc.KindUDP, echoUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{1, 0, 512, 1400, 9000, 60000}
	for i, n := range sizes {
		// Written back to back: only the framing tells them apart.
		if err := rpc.WriteDatagram(st, bytes.Repeat([]byte{byte('a' + i)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, rpc.MaxDatagram)
	for i, want := range sizes {
		n, err := rpc.ReadDatagram(st, buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if n != want || (n > 0 && (buf[0] != byte('a'+i) || buf[n-1] != byte('a'+i))) {
			t.Errorf("datagram %d: %d bytes starting %q, want %d of %q", i, n, buf[:min(n, 1)], want, rune('a'+i))
		}
	}
}

func TestUDPIdleFlowIsClosed(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.UDPIdleTimeout = 150 * time.Millisecond })
	sess := laptop(t, serve(t, m))
	st, err := dialStream(t, sess, rpc.KindUDP, echoUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "one active UDP flow", func() bool { return gaugeValue(t, m, "tunnel_manager_udp_flows_active") == 1 })
	start := time.Now()
	if _, err := io.ReadAll(st); err != nil { // EOF once the manager gives up
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("idle flow closed after %s", d)
	}
	eventually(t, "no active UDP flow", func() bool { return gaugeValue(t, m, "tunnel_manager_udp_flows_active") == 0 })
}

func TestUDPTrafficKeepsFlowOpen(t *testing.T) {
	idle := 300 * time.Millisecond
	m, _ := newTestManager(t, func(c *Config) { c.UDPIdleTimeout = idle })
	sess := laptop(t, serve(t, m))
	st, err := dialStream(t, sess, rpc.KindUDP, echoUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, rpc.MaxDatagram)
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(idle / 5) {
		if err := rpc.WriteDatagram(st, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if n, err := rpc.ReadDatagram(st, buf); err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("an active flow was closed: %q, %v", buf[:n], err)
		}
	}
}

func TestUDPLaptopCloseEndsFlow(t *testing.T) {
	m, _ := newTestManager(t, nil) // idle timeout 5 s: the close, not the timeout, ends it
	sess := laptop(t, serve(t, m))
	st, err := dialStream(t, sess, rpc.KindUDP, echoUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "one active UDP flow", func() bool { return gaugeValue(t, m, "tunnel_manager_udp_flows_active") == 1 })
	st.Close()
	eventually(t, "no active UDP flow", func() bool { return gaugeValue(t, m, "tunnel_manager_udp_flows_active") == 0 })
}

func TestUDPToClosedPortStaysOpen(t *testing.T) {
	// ICMP port unreachable answers are not the end of a UDP flow.
	m, _ := newTestManager(t, func(c *Config) { c.UDPIdleTimeout = time.Second })
	sess := laptop(t, serve(t, m))
	dst := netip.MustParseAddrPort(closedUDPPort(t))
	st, err := dialStream(t, sess, rpc.KindUDP, dst)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := rpc.WriteDatagram(st, []byte("anyone?")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gaugeValue(t, m, "tunnel_manager_udp_flows_active") != 1 {
		t.Error("the flow ended on an ICMP error")
	}
}

func TestUDPForbidden(t *testing.T) {
	echo := echoUDP(t)
	for _, tc := range []struct {
		allowLoopback bool
		dst           netip.AddrPort
		want          error
	}{
		{false, echo, rpc.StatusForbidden},
		{true, echo, nil},
		{true, netip.MustParseAddrPort("169.254.169.254:53"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("255.255.255.255:53"), rpc.StatusForbidden},
		{true, netip.MustParseAddrPort("[ff02::1]:53"), rpc.StatusForbidden},
	} {
		m, _ := newTestManager(t, func(c *Config) { c.AllowLoopback = tc.allowLoopback })
		sess := laptop(t, serve(t, m))
		if _, err := dialStream(t, sess, rpc.KindUDP, tc.dst); !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("%s (loopback allowed: %v): %v, want %v", tc.dst, tc.allowLoopback, err, tc.want)
		}
	}
}
