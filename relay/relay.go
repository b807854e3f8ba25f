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
	"sync/atomic"
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
	// out, only while data flows: a direction waits for bytes with a small
	// buffer of its own, takes a large one while its reads fill the small
	// one, and gives it back at the first short read. An idle connection
	// (most of a laptop's) pins a few KiB, not two large buffers.
	Buffers *Buffers
	// AB and BA count the bytes from a to b and from b to a.
	AB, BA Counter
	// HalfClosedIdle, when set, bounds how long the other direction may
	// stay silent once one has ended: a server that never answers nor
	// closes a half-closed connection would otherwise hold it (and its
	// stream, buffers and slot) for ever. yamux has no reset, so a client
	// that went away looks the same as one that only half-closed.
	HalfClosedIdle time.Duration
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
	// Sources are wrapped only for the half-closed bound: a plain TCP
	// source lets io.Copy splice.
	srcA, srcB := net.Conn(a), net.Conn(b)
	startA, startB := func() {}, func() {}
	if o.HalfClosedIdle > 0 {
		ra := idleReader{Conn: a, idle: o.HalfClosedIdle, on: new(atomic.Bool)}
		rb := idleReader{Conn: b, idle: o.HalfClosedIdle, on: new(atomic.Bool)}
		srcA, srcB, startA, startB = ra, rb, ra.start, rb.start
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		half(b, srcA, o.BufAB, o.Buffers, o.AB, abort)
		startB()
	})
	half(a, srcB, o.BufBA, o.Buffers, o.BA, abort)
	startA()
	wg.Wait()
	a.Close()
	b.Close()
}

// idleReader is a relay's source that, once started, must deliver bytes
// at least every idle or its reads fail.
type idleReader struct {
	net.Conn
	idle time.Duration
	on   *atomic.Bool
}

func (r idleReader) start() {
	r.on.Store(true)
	_ = r.SetReadDeadline(time.Now().Add(r.idle))
}

func (r idleReader) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if n > 0 && r.on.Load() {
		_ = r.SetReadDeadline(time.Now().Add(r.idle))
	}
	return n, err
}

// half copies src to dst, then half-closes dst; an error aborts both.
func half(dst, src net.Conn, buf []byte, pool *Buffers, n Counter, abort func()) {
	var err error
	w := io.Writer(dst)
	if n != nil {
		w = CountingWriter{W: dst, C: n}
	}
	if buf == nil && pool != nil {
		err = copyLending(w, src, pool)
	} else if buf != nil {
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

// smallBuf is what a direction of a relay waits for bytes with.
const smallBuf = 16 << 10

// copyLending copies src to w until EOF, with a large buffer from pool only
// while reads fill a small one.
func copyLending(w io.Writer, src io.Reader, pool *Buffers) error {
	small := make([]byte, min(smallBuf, pool.Size))
	var big []byte
	defer func() {
		if big != nil {
			pool.Put(big)
		}
	}()
	for {
		buf := small
		if big != nil {
			buf = big
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return rerr
		case big == nil && nr == len(small) && pool.Size > len(small):
			big = pool.tryGet() // bulk: fuller frames from here on, when there are buffers to lend
		case big != nil && nr < len(small):
			pool.Put(big) // a trickle, or the end of a burst
			big = nil
		}
	}
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
	// Max bounds the buffers a relay borrows at once (0: no bound); past
	// it, relays copy with their small buffers, slower but never more
	// memory.
	Max  int64
	p    sync.Pool // *[]byte
	lent atomic.Int64
}

// tryGet is Get within Max: nil when Max buffers are out.
func (b *Buffers) tryGet() []byte {
	if b.Max > 0 && b.lent.Load() >= b.Max {
		return nil
	}
	return b.Get()
}

// Lent says how many buffers are out now.
func (b *Buffers) Lent() int64 { return b.lent.Load() }

// Get returns a buffer of b.Size bytes.
func (b *Buffers) Get() []byte {
	b.lent.Add(1)
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, b.Size)
}

// Put takes back a buffer Get returned.
func (b *Buffers) Put(buf []byte) {
	b.lent.Add(-1)
	if cap(buf) >= b.Size {
		buf = buf[:b.Size]
		b.p.Put(&buf)
	}
}
