// Package relay copies bytes both ways between two connections, as each hop
// of tunnel does (the manager between a laptop's stream and the cluster,
// the sidecar between a client and the app, the daemon between the manager
// and a local process), so that every hop ends a connection the same way.
package relay

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// Counter counts bytes; a Prometheus counter is one.
type Counter interface{ Add(float64) }

// Options tune a relay; the zero value relays uncounted with io.Copy,
// which lets two TCP connections splice.
type Options struct {
	// BufAB and BufBA are the copy buffers from a to b and from b to a.
	// Large buffers mean fewer, fuller yamux frames, and every frame costs
	// CPU at each hop of a port-forward.
	BufAB, BufBA []byte
	// Buffers, when set, lends the relay the buffers BufAB and BufBA leave
	// out, for as long as it runs.
	Buffers *Buffers
	// AB and BA count the bytes from a to b and from b to a.
	AB, BA Counter
}

// Conns copies a ⇄ b until both directions end, then closes both:
//
//   - one side's EOF is passed on as a half-close of the other, so a
//     request/response protocol that shuts down its sending side still gets
//     its answer: CloseWrite where the connection has one, else Close (a
//     yamux stream's Close only ends its writes; it keeps reading);
//   - an error either way, or ctx ending, aborts both: blocked reads are
//     woken by a deadline in the past and both are closed. yamux has no
//     reset, so a stream's far end sees that as EOF.
func Conns(ctx context.Context, a, b net.Conn, o Options) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			_ = a.SetReadDeadline(time.Unix(1, 0))
			_ = b.SetReadDeadline(time.Unix(1, 0))
			a.Close()
			b.Close()
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	if o.Buffers != nil {
		if o.BufAB == nil {
			o.BufAB = o.Buffers.Get()
			defer o.Buffers.Put(o.BufAB)
		}
		if o.BufBA == nil {
			o.BufBA = o.Buffers.Get()
			defer o.Buffers.Put(o.BufBA)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { half(b, a, o.BufAB, o.AB, abort) })
	half(a, b, o.BufBA, o.BA, abort)
	wg.Wait()
	a.Close()
	b.Close()
}

// half copies src to dst, then half-closes dst; an error aborts both.
func half(dst, src net.Conn, buf []byte, n Counter, abort func()) {
	var err error
	w := io.Writer(dst)
	if n != nil {
		w = CountingWriter{W: dst, C: n}
	}
	if buf != nil {
		// Neither src's WriteTo nor dst's ReadFrom may bypass the buffer.
		_, err = io.CopyBuffer(struct{ io.Writer }{w}, OnlyReader{src}, buf)
	} else {
		_, err = io.Copy(w, src)
	}
	if err != nil {
		abort()
		return
	}
	CloseWrite(dst)
}

// CloseWrite ends c's writes: CloseWrite where c has one, else Close.
func CloseWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// CountingWriter adds every byte written through it to a counter, so a
// byte metric moves while a long connection is still open.
type CountingWriter struct {
	W io.Writer
	C Counter
}

func (cw CountingWriter) Write(p []byte) (int, error) {
	n, err := cw.W.Write(p)
	cw.C.Add(float64(n))
	return n, err
}

// OnlyReader hides a connection's WriteTo, so io.CopyBuffer uses our buffer.
type OnlyReader struct{ io.Reader }

// Buffers lends copy buffers of Size bytes, reused across connections: a
// fresh 256 KiB per connection costs more than a short request itself. It
// is an httputil.BufferPool too.
type Buffers struct {
	Size int
	p    sync.Pool // *[]byte
}

// Get returns a buffer of b.Size bytes.
func (b *Buffers) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, b.Size)
}

// Put takes back a buffer Get returned.
func (b *Buffers) Put(buf []byte) {
	if cap(buf) >= b.Size {
		buf = buf[:b.Size]
		b.p.Put(&buf)
	}
}
