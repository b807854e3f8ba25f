package manager

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"

	"tunnel.dev/tunnel/rpc"
)

// serveIntercepted carries one connection a sidecar captured to the laptop
// that holds the intercept h.Flow names. It does not wait for the laptop's
// status: it opens the laptop's stream and relays both ways at once, so the
// laptop's status byte reaches the sidecar as the first byte back and the
// connection's first bytes travel with the header (one round trip over the
// port-forward, not two).
func (m *Manager) serveIntercepted(ctx context.Context, from *session, st net.Conn, h rpc.Header) {
	defer st.Close()
	log := from.log
	ic, owner, ok := m.intercepts.lookup(h.Flow)
	from.mu.Lock()
	watches := from.sidecarOf
	from.mu.Unlock()
	if ok && watches != ic.GetSpec().GetNamespace()+"/"+ic.GetSpec().GetWorkload() {
		ok = false // a sidecar reaches only its own workload's laptops
	}
	if !ok {
		m.metrics.dialErrors.WithLabelValues("intercept", "gone").Inc()
		_ = writeStatus(st, rpc.StatusUnreachable)
		return
	}
	up, err := owner.mux.OpenStream()
	if err != nil {
		log.Debug("open intercept stream to the laptop", "err", err, "intercept", ic.GetSpec().GetName())
		m.metrics.dialErrors.WithLabelValues("intercept", "session").Inc()
		_ = writeStatus(st, rpc.StatusUnreachable)
		return
	}
	defer up.Close()
	if err := rpc.WriteHeader(up, rpc.Header{Kind: rpc.KindIntercept, Dst: h.Dst, Flow: ic.GetSpec().GetLaptopId()}); err != nil {
		_ = writeStatus(st, rpc.StatusUnreachable)
		return
	}
	bufA, bufB := m.buffer(), m.buffer()
	defer m.buffers.Put(bufA)
	defer m.buffers.Put(bufB)
	pipe(ctx, st, up, *bufA, *bufB,
		m.metrics.bytes.WithLabelValues("intercept", toLaptop),
		m.metrics.bytes.WithLabelValues("intercept", toCluster))
}

// buffer is a frameBody-sized copy buffer, reused across connections: a
// fresh 256 KiB per connection costs more than a short request itself.
func (m *Manager) buffer() *[]byte {
	if b, ok := m.buffers.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, frameBody)
	return &b
}

// pipe relays two yamux streams until both directions end. A yamux Close
// only ends its writes, so each direction's EOF is passed on as a Close of
// the other stream; an error on either aborts both.
func pipe(ctx context.Context, a net.Conn, b *yamux.Stream, bufAB, bufBA []byte, toB, toA prometheus.Counter) {
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
	var wg sync.WaitGroup
	// Large reads both ways, as in relay: toward the laptop every frame
	// costs CPU at each hop of the port-forward.
	wg.Go(func() {
		if _, err := io.CopyBuffer(countingWriter{b, toB}, onlyReader{a}, bufAB); err != nil {
			abort()
			return
		}
		b.Close()
	})
	if _, err := io.CopyBuffer(countingWriter{a, toA}, onlyReader{b}, bufBA); err != nil {
		abort()
	} else {
		a.Close()
	}
	wg.Wait()
}
