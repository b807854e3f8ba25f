package netstack

import (
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

var dnsAddr = netip.MustParseAddrPort("198.18.0.53:53")

// serveGreeting answers each connection ln accepts with greeting, until ln
// closes; the returned func waits for it.
func serveGreeting(ln net.Listener, greeting string) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, greeting)
			c.Close()
		}
	}()
	return wg.Wait
}

func TestListen(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, echo)}
	h := newHarness(t, Config{}, d)
	ln, err := h.stack.Listen(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	wait := serveGreeting(ln, "hello from the stack")

	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), dnsAddr)
	if err != nil {
		t.Fatalf("connect to the listener: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "hello from the stack" {
		t.Fatalf("read %q, %v; want the listener's greeting", got, err)
	}
	if dials := d.dialed(); len(dials) != 0 {
		t.Fatalf("dialed %v for a listener's address", dials)
	}

	// Another port of the address still goes to the cluster.
	other := netip.AddrPortFrom(dnsAddr.Addr(), 80)
	conn, err = h.client.dialTCP(timeout(t, 10*time.Second), other)
	if err != nil {
		t.Fatalf("connect to another port: %v", err)
	}
	conn.Close()

	// Once the listener closes, its port is forwarded too.
	if err := ln.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	wait()
	conn, err = h.client.dialTCP(timeout(t, 10*time.Second), dnsAddr)
	if err != nil {
		t.Fatalf("connect after the listener closed: %v", err)
	}
	conn.Close()
	if got, want := d.dialed(), []netip.AddrPort{other, dnsAddr}; !slices.Equal(got, want) {
		t.Errorf("dialed %v, want %v", got, want)
	}
}

func TestListenPacket(t *testing.T) {
	for _, addr := range []netip.AddrPort{dnsAddr, netip.MustParseAddrPort("[fd00:53::53]:53")} {
		t.Run(addr.Addr().String(), func(t *testing.T) {
			d := &fakeDialer{}
			h := newHarness(t, Config{}, d)
			pc, err := h.stack.ListenPacket(addr)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			conn := h.client.dialUDP(t, addr)
			defer conn.Close()

			if _, err := conn.Write([]byte("query")); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			n, from, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "query" {
				t.Fatalf("listener read %q, %v; want the query", buf[:n], err)
			}
			if want := conn.LocalAddr().(*net.UDPAddr).AddrPort(); from.(*net.UDPAddr).AddrPort() != want {
				t.Errorf("query from %v, want %v", from, want)
			}
			if _, err := pc.WriteTo([]byte("answer"), from); err != nil {
				t.Fatalf("answer: %v", err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err = conn.Read(buf)
			if err != nil || string(buf[:n]) != "answer" {
				t.Fatalf("client read %q, %v; want the answer", buf[:n], err)
			}
			if dials := d.dialed(); len(dials) != 0 {
				t.Errorf("dialed %v for a listener's address", dials)
			}
		})
	}
}

// A TCP and a UDP service share an address: closing one leaves the other
// answering.
func TestListenSharedAddress(t *testing.T) {
	d := &fakeDialer{}
	h := newHarness(t, Config{}, d)
	pc, err := h.stack.ListenPacket(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := h.stack.Listen(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	wait := serveGreeting(ln, "tcp")
	if err := pc.Close(); err != nil {
		t.Fatalf("close packet listener: %v", err)
	}
	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), dnsAddr)
	if err != nil {
		t.Fatalf("connect after the UDP service closed: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "tcp" {
		t.Errorf("read %q, %v; want the greeting", got, err)
	}
	ln.Close()
	wait()
	if _, err := h.stack.Listen(dnsAddr); err != nil {
		t.Errorf("listen again after close: %v", err)
	}
}
