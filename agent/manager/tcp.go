package manager

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"tunnel.dev/tunnel/rpc"
)

// serveTCP dials h.Dst for a TCP stream, answers the header with the dial's
// Status, and relays bytes until both directions have ended.
func (m *Manager) serveTCP(ctx context.Context, log *slog.Logger, st net.Conn, h rpc.Header) {
	defer st.Close()
	log = log.With("flow", h.Flow, "dst", h.Dst.String())
	c, status := m.dialStream(ctx, log, "tcp", h, m.dialTCP)
	if err := writeStatus(st, status); err != nil || status != rpc.StatusOK {
		if c != nil {
			c.Close()
		}
		return
	}
	defer c.Close()
	relay(ctx, st, c,
		m.metrics.bytes.WithLabelValues("tcp", toCluster),
		m.metrics.bytes.WithLabelValues("tcp", toLaptop))
}

// relay copies st ⇄ c until both directions end, half-closing each
// separately so a request/response protocol that shuts down its sending side
// still gets its answer:
//
//   - laptop EOF (the laptop closed the stream, which in yamux only stops
//     its writes: it keeps reading) → CloseWrite on c, keep relaying c → st;
//   - cluster EOF (c's peer shut down its side) → st.Close, which in yamux
//     is the same half-close: the laptop reads EOF and may still send, which
//     keeps reaching c until the laptop closes too (or yamux's
//     StreamCloseTimeout, a minute, gives up on it);
//   - an error either way (reset, session gone, ctx ended) aborts both: c is
//     closed and st stops reading and is closed. yamux has no reset, so the
//     laptop sees that as EOF.
func relay(ctx context.Context, st, c net.Conn, up, down prometheus.Counter) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			c.Close()
			_ = st.SetReadDeadline(time.Unix(1, 0)) // wakes a blocked Read
			st.Close()
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() { // laptop → cluster
		if _, err := io.Copy(countingWriter{c, up}, st); err != nil {
			abort()
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			abort()
		}
	})
	// cluster → laptop, in large reads: every yamux frame becomes at least
	// one write at each hop of the port-forward (containerd, the kubelet,
	// the API server), so fewer, fuller frames cost less CPU all along.
	buf := make([]byte, frameBody)
	if _, err := io.CopyBuffer(countingWriter{st, down}, onlyReader{c}, buf); err != nil {
		abort()
	} else {
		st.Close()
	}
	wg.Wait()
}

// frameBody is the largest yamux data frame body the manager sends: with
// its 12-byte header, 256 KiB (measured: containerd's CPU per GB fell by a
// third against 32 KiB frames).
const frameBody = 256<<10 - 12

// onlyReader hides a connection's WriteTo, so io.CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }
