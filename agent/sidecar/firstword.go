package sidecar

import (
	"net"
	"sync/atomic"

	"tunnel.dev/tunnel/relay"
)

// serverFirstAfter is how many connections in a row must show the server
// speaking first before a capture stops waiting for clients' first bytes.
const serverFirstAfter = 2

// firstWord learns who speaks first on a connection whose client said
// nothing within the sniff time. A port whose server greets its clients
// (MySQL, SMTP, FTP) would make every connection wait out the sniff; once
// the server has spoken first serverFirstAfter times in a row, the capture
// relays such a port's connections at once. An HTTP server never speaks
// first, so a port that serves HTTP is never taken for one.
type firstWord struct {
	decided atomic.Bool
	c       *capture
}

// conn wraps one side of the connection: server says whether it is the
// app's (or the laptop's) side.
func (f *firstWord) conn(c net.Conn, server bool) net.Conn {
	return &firstWordConn{Conn: c, f: f, server: server}
}

type firstWordConn struct {
	net.Conn
	f      *firstWord
	server bool
}

func (w *firstWordConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 && w.f.decided.CompareAndSwap(false, true) {
		w.f.c.heard(w.server)
	}
	return n, err
}

func (w *firstWordConn) CloseWrite() error {
	relay.CloseWrite(w.Conn)
	return nil
}

// heard counts a connection on which the server (or the client) spoke first.
func (c *capture) heard(server bool) {
	if !server {
		c.serverFirstRun.Store(0)
		return
	}
	if c.serverFirstRun.Add(1) >= serverFirstAfter && c.serverFirst.CompareAndSwap(false, true) {
		c.log.Info("the server speaks first on this port: its connections are relayed at once, without waiting for HTTP")
	}
}
