package manager

import (
	"context"
	"net"
	"sync"
)

// streamListener is the net.Listener of the one grpc.Server that serves the
// control streams of every session: sessions hand it streams, gRPC accepts
// them as connections.
type streamListener struct {
	addr    net.Addr
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

func newStreamListener(addr net.Addr) *streamListener {
	return &streamListener{addr: addr, streams: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands a control stream to gRPC, or closes it when gRPC or the
// session is gone.
func (l *streamListener) deliver(ctx context.Context, c net.Conn) {
	select {
	case l.streams <- c:
	case <-l.done:
		c.Close()
	case <-ctx.Done():
		c.Close()
	}
}

// Accept implements net.Listener.
func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.streams:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *streamListener) Addr() net.Addr { return l.addr }
