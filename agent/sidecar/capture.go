package sidecar

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"tunnel.dev/tunnel/relay"
)

// capture serves one captured port: the Service sends the connections meant
// for the app's port here. A connection that speaks HTTP is served request
// by request (so intercepts that start or end apply at once, even on
// kept-alive connections, and personal intercepts can pick requests by
// header); anything else is relayed whole, to the laptop when a global
// intercept holds the port, else to the app.
type capture struct {
	log     *slog.Logger
	app     netip.AddrPort // the app container's port, on the pod's address
	port    uint32         // the app's port number, which intercepts name
	pod     string
	link    *link
	direct  *direct // spares straight to laptops, for HTTP
	metrics *metrics
	sniff   time.Duration // how long to wait for a client's first bytes
	http    *httpMode
	buffers *relay.Buffers

	serverFirstRun atomic.Int32 // connections in a row whose server spoke first
	serverFirst    atomic.Bool  // this port's server speaks first: no sniffing

	mu   sync.Mutex                       // guards following
	live map[uint64]map[*[]io.Closer]bool // connections relayed whole to a laptop, by intercept
}

// serve accepts on ln until ctx ends.
func (c *capture) serve(ctx context.Context, ln net.Listener) error {
	hl := newConnListener(ln.Addr())
	defer hl.Close()
	go func() { _ = c.http.server.Serve(hl) }()
	context.AfterFunc(ctx, func() { ln.Close(); c.http.server.Close() })
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go c.handle(ctx, conn, hl)
	}
}

// handle picks the connection's mode by its first bytes: HTTP is served
// request by request (under a global intercept too, since requests then
// share pooled connections to the laptop: one round trip over the
// port-forward each, where a new stream per connection costs more), the
// rest is relayed whole. A client that says nothing within the sniff time
// (a protocol whose server speaks first) is relayed whole; once a port's
// server has been seen to speak first, its connections are relayed at once.
func (c *capture) handle(ctx context.Context, conn net.Conn, hl *connListener) {
	if c.serverFirst.Load() {
		c.raw(ctx, conn, nil)
		return
	}
	br := bufio.NewReaderSize(conn, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(c.sniff))
	if _, err := br.Peek(1); err == nil && br.Buffered() < 8 {
		_, _ = br.Peek(8) // enough for any request line's method
	}
	head, _ := br.Peek(br.Buffered())
	_ = conn.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: conn, r: br}
	var fw *firstWord
	if len(head) == 0 { // the client waits: perhaps for the server's greeting
		fw = &firstWord{c: c}
	} else {
		c.heard(false)
	}
	if looksLikeHTTP(head) {
		hl.deliver(pc)
		return
	}
	c.raw(ctx, pc, fw)
}

// looksLikeHTTP: an HTTP/1.x request line's method, or the HTTP/2 preface.
func looksLikeHTTP(b []byte) bool {
	if n := min(len(b), len(h2Preface)); n >= 3 && string(b[:n]) == h2Preface[:n] {
		return true
	}
	for _, m := range []string{"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "PATCH ", "OPTIONS ", "CONNECT ", "TRACE "} {
		if len(b) >= len(m) && string(b[:len(m)]) == m {
			return true
		}
	}
	return false
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// peekedConn reads what the sniffer buffered first.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *peekedConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Conn.Close()
}

// connListener hands sniffed HTTP connections to an http.Server.
type connListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }
