package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	mdns "github.com/miekg/dns"
)

// attemptTimeout bounds one try of one upstream, so a dead first upstream
// leaves time for the next within queryTimeout.
const attemptTimeout = 2 * time.Second

var errNoUpstream = errors.New("no upstream resolvers")

// forwarder sends queries to the resolvers the machine had, in order.
type forwarder struct {
	servers []netip.AddrPort
	udp     *mdns.Client
	tcp     *mdns.Client
}

func newForwarder(servers []netip.AddrPort) *forwarder {
	return &forwarder{
		servers: append([]netip.AddrPort(nil), servers...),
		udp:     &mdns.Client{Net: "udp", UDPSize: ednsSize},
		tcp:     &mdns.Client{Net: "tcp"},
	}
}

// exchange asks each upstream in turn until one answers. A server that fails,
// or answers SERVFAIL or REFUSED, passes the query to the next; if none does
// better, the last such answer is returned.
func (f *forwarder) exchange(ctx context.Context, q *mdns.Msg, tcp bool) (*mdns.Msg, error) {
	if len(f.servers) == 0 {
		return nil, errNoUpstream
	}
	var errs []error
	var last *mdns.Msg
	for _, s := range f.servers {
		m, err := f.try(ctx, q, s, tcp)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("upstream %s: %w", s, err))
			if ctx.Err() != nil {
				return nil, errors.Join(errs...)
			}
		case m.Rcode == mdns.RcodeServerFailure || m.Rcode == mdns.RcodeRefused:
			last = m
		default:
			return m, nil
		}
	}
	if last != nil {
		return last, nil
	}
	return nil, errors.Join(errs...)
}

// try asks one upstream, over TCP when the client used TCP or the UDP answer
// came back truncated.
func (f *forwarder) try(ctx context.Context, q *mdns.Msg, s netip.AddrPort, tcp bool) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	if !tcp {
		m, _, err := f.udp.ExchangeContext(ctx, q, s.String())
		if err != nil || !m.Truncated {
			return m, err
		}
	}
	m, _, err := f.tcp.ExchangeContext(ctx, q, s.String())
	return m, err
}
