package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"

	"tunnel.dev/tunnel/rpc"
)

// forbidden reports whether the manager refuses to dial dst, so that it never
// becomes a way into its own pod (loopback, unspecified, 0.0.0.0/8 which
// Linux treats as "this host"), into the node's metadata service
// (link-local, and the metadata addresses outside link-local space), or to
// more than one host (multicast, broadcast), also through NAT64.
// allowLoopback lifts the loopback rule, for tests only.
func forbidden(dst netip.Addr, allowLoopback bool) bool {
	a := dst.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsMulticast(),
		a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return true
	case a.Is4() && (a.As4()[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return true
	case a == netip.AddrFrom4([4]byte{100, 100, 100, 200}): // Alibaba Cloud metadata
		return true
	case a == netip.AddrFrom4([4]byte{168, 63, 129, 16}): // Azure's wire server and DNS
		return true
	case a == netip.MustParseAddr("fd00:ec2::254"): // AWS metadata over IPv6
		return true
	case a == netip.MustParseAddr("fd20:ce::254"): // GCE metadata over IPv6
		return true
	case a.IsLoopback():
		return !allowLoopback
	case a.Is6() && netip.MustParsePrefix("64:ff9b::/96").Contains(a):
		// NAT64 (RFC 6052) reaches the IPv4 address in the last 4 bytes.
		b := a.As16()
		return forbidden(netip.AddrFrom4([4]byte(b[12:])), allowLoopback)
	}
	return false
}

// dialStatus is the answer a laptop gets for a failed dial: refused when the
// destination said so, unreachable for everything else (timeouts, no route).
func dialStatus(err error) rpc.Status {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return rpc.StatusRefused
	}
	return rpc.StatusUnreachable
}

// writeStatus answers a stream's header with one byte.
func writeStatus(w io.Writer, s rpc.Status) error {
	if _, err := w.Write([]byte{byte(s)}); err != nil {
		return fmt.Errorf("answer %q: %w", s.Error(), err)
	}
	return nil
}

// dialStream is the way of every stream into the cluster (TCP, UDP): the
// reach decision for the session's verified user and the destination, then
// the dial. A nil conn comes with the Status to answer.
func (m *Manager) dialStream(ctx context.Context, s *session, log *slog.Logger, kind string, h rpc.Header,
	dial func(context.Context, netip.AddrPort) (net.Conn, error)) (net.Conn, rpc.Status) {
	if err := m.reach.decide(ctx, s, h.Dst.Addr()); err != nil {
		m.metrics.dialErrors.WithLabelValues(kind, statusLabel(rpc.StatusForbidden)).Inc()
		m.metrics.refused.WithLabelValues(sessionKind(s), "reach").Inc()
		log.Debug("refusing destination", "err", err)
		return nil, rpc.StatusForbidden
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.DialTimeout)
	defer cancel()
	select { // a turn among the session's dials in flight
	case s.dials <- struct{}{}:
		defer func() { <-s.dials }()
	case <-ctx.Done():
		m.metrics.refused.WithLabelValues(sessionKind(s), "limit").Inc()
		return nil, rpc.StatusUnreachable
	}
	c, err := dial(ctx, h.Dst)
	if err != nil {
		s := dialStatus(err)
		m.metrics.dialErrors.WithLabelValues(kind, statusLabel(s)).Inc()
		log.Debug("dial failed", "kind", kind, "err", err)
		return nil, s
	}
	return c, rpc.StatusOK
}

func statusLabel(s rpc.Status) string {
	switch s {
	case rpc.StatusOK:
		return "ok"
	case rpc.StatusRefused:
		return "refused"
	case rpc.StatusUnreachable:
		return "unreachable"
	case rpc.StatusForbidden:
		return "forbidden"
	}
	return "unknown"
}
