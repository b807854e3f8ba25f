package manager

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tunnel.dev/tunnel/rpc"
)

// serveUDP relays one UDP flow: datagrams framed on st go to h.Dst from a
// socket of their own, and what h.Dst sends back is framed onto st. The flow
// ends when the laptop closes st, when either side fails, or after
// UDPIdleTimeout without a datagram either way.
func (m *Manager) serveUDP(ctx context.Context, s *session, st net.Conn, h rpc.Header) {
	defer st.Close()
	log := s.log.With("flow", h.Flow, "dst", h.Dst.String())
	c, status := m.dialStream(ctx, s, log, "udp", h, m.dialUDP)
	if err := writeStatus(st, status); err != nil || status != rpc.StatusOK {
		if c != nil {
			c.Close()
		}
		return
	}
	m.metrics.udpFlowsActive.Inc()
	defer m.metrics.udpFlowsActive.Dec()

	closed := make(chan struct{})
	var once sync.Once
	abort := func() {
		once.Do(func() {
			close(closed)
			c.Close()
			_ = st.SetReadDeadline(time.Unix(1, 0)) // wakes a blocked Read
			st.Close()
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()

	start := time.Now()
	var last atomic.Int64 // time.Duration since start of the last datagram either way
	touch := func() { last.Store(int64(time.Since(start))) }
	up := m.metrics.bytes.WithLabelValues("udp", toCluster)
	down := m.metrics.bytes.WithLabelValues("udp", toLaptop)

	var wg sync.WaitGroup
	wg.Go(func() { // laptop → cluster
		defer abort()
		buf := make([]byte, rpc.MaxDatagram)
		for {
			n, err := rpc.ReadDatagram(st, buf)
			if err != nil {
				return
			}
			touch()
			// A lost datagram is UDP's business; only a closed socket ends the flow.
			if _, err := c.Write(buf[:n]); errors.Is(err, net.ErrClosed) {
				return
			}
			up.Add(float64(n))
		}
	})
	wg.Go(func() { // cluster → laptop
		defer abort()
		buf := make([]byte, rpc.MaxDatagram)
		for {
			n, err := c.Read(buf)
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an ICMP port unreachable for an earlier datagram
			}
			if err != nil {
				return
			}
			touch()
			if err := rpc.WriteDatagram(st, buf[:n]); err != nil {
				return
			}
			down.Add(float64(n))
		}
	})

	idle := m.cfg.UDPIdleTimeout
	t := time.NewTimer(idle)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case <-closed:
			waiting = false
		case <-t.C:
			if quiet := time.Since(start) - time.Duration(last.Load()); quiet < idle {
				t.Reset(idle - quiet)
				continue
			}
			log.Debug("UDP flow idle, closing")
			abort()
		}
	}
	wg.Wait()
}
