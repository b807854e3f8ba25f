package netstack

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// serveTCP runs handle for each connection to a loopback listener until the
// test ends, then closes the listener and every connection and waits.
func serveTCP(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo sends back what it reads, then half-closes.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// answerAtEOF reads the whole request, then answers with its length: a
// protocol that needs the client's half-close.
func answerAtEOF(c *net.TCPConn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "got %d bytes", n)
}

// sink counts what it reads and reports the total at EOF.
func sink(total chan<- int64) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		total <- n
	}
}

// source writes n bytes of a known pattern, then closes.
func source(n int64) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		io.Copy(c, io.LimitReader(&pattern{}, n))
	}
}

// pattern is an endless reader of bytes 0, 1, ..., 250, 0, 1, ...: a prime
// period so misplaced chunks do not line up.
type pattern struct{ off int }

// patternBlock is a whole number of periods to copy from.
var patternBlock = func() []byte {
	b := make([]byte, 251*1024)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		n += copy(b[n:], patternBlock[(p.off+n)%251:])
	}
	p.off += n
	return n, nil
}

// serveUDPEcho answers every datagram with itself until the test ends.
func serveUDPEcho(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], addr)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}
