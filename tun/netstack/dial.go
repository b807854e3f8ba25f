package netstack

import (
	"errors"
	"net/netip"

	"tunnel.dev/tunnel/rpc"
)

// dialFailed counts a failed dial and logs it, at most once per logEvery
// for each destination.
func (s *Stack) dialFailed(kind rpc.Kind, src, dst netip.AddrPort, err error) {
	if s.ctx.Err() != nil {
		return // closing: every pending dial fails, none is an error
	}
	s.stats.dialErrors.Add(1)
	var status rpc.Status
	if errors.As(err, &status) {
		if status == rpc.StatusForbidden {
			s.stats.dialsRefused.Add(1)
		}
		// The cluster answered: the destination's problem, not ours.
		if s.limiter.allow("dial " + kind.String() + " " + dst.String()) {
			s.log.Info("dial refused", "kind", kind, "src", src, "dst", dst, "reason", status.Error())
		}
		return
	}
	s.logLimited("dial "+kind.String()+" "+dst.String(), "dial failed", "kind", kind, "src", src, "dst", dst, "err", err)
}
