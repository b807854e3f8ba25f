// Package testnet holds the loopback servers and connection pairs the
// unit tests of several packages share.
package testnet

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// ServeTCP runs handle for each connection to a 127.0.0.1 listener and
// closes the connection after it. When the test ends it closes the
// listener and every connection still open, and waits for the handlers.
func ServeTCP(t testing.TB, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var open []net.Conn
	var wg sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-accepting
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		Wait(t, &wg, "the handlers of "+ln.Addr().String())
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// Pair returns the two ends of a loopback TCP connection, closed when the
// test ends.
func Pair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	addr := ServeTCPOnce(t, accepted)
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// ServeTCPOnce accepts one connection on a 127.0.0.1 listener and hands it
// over, open.
func ServeTCPOnce(t testing.TB, accepted chan<- net.Conn) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer ln.Close()
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// Wait waits for wg, failing the test if it takes more than 5 seconds.
func Wait(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Errorf("%s did not stop", what)
	}
}
