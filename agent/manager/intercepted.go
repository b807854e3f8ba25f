package manager

import (
	"context"
	"net"

	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
)

// serveIntercepted carries one connection a sidecar captured to the laptop
// that holds the intercept h.Flow names. It does not wait for the laptop's
// status: it opens the laptop's stream and relays both ways at once, so the
// laptop's status byte reaches the sidecar as the first byte back and the
// connection's first bytes travel with the header (one round trip over the
// port-forward, not two). The laptop's WireGuard path carries it when it
// is up, the session's stream over the port-forward when not.
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
	up, path := m.laptopOverWireGuard(ctx, owner), "wireguard"
	if up == nil {
		var err error
		if up, err = owner.mux.OpenStream(); err != nil {
			log.Debug("open intercept stream to the laptop", "err", err, "intercept", ic.GetSpec().GetName())
			m.metrics.dialErrors.WithLabelValues("intercept", "session").Inc()
			_ = writeStatus(st, rpc.StatusUnreachable)
			return
		}
		path = "session"
	}
	defer up.Close()
	m.metrics.intercepted.WithLabelValues(path).Inc()
	if err := rpc.WriteHeader(up, rpc.Header{Kind: rpc.KindIntercept, Dst: h.Dst, Flow: ic.GetSpec().GetLaptopId()}); err != nil {
		_ = writeStatus(st, rpc.StatusUnreachable)
		return
	}
	relay.Conns(ctx, st, up, relay.Options{
		Buffers: &m.buffers,
		// A connection one side has ended may not hold its slot for ever.
		HalfClosedIdle: halfClosedIdle,
		AB:             m.metrics.bytes.WithLabelValues("intercept", toLaptop),
		BA:             m.metrics.bytes.WithLabelValues("intercept", toCluster),
	})
}
