package manager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/dns"
)

var (
	// errBadQuery: the laptop sent bytes that are not a DNS query.
	errBadQuery = errors.New("malformed DNS query")
	// errNoAnswer: no nameserver answered.
	errNoAnswer = errors.New("no cluster nameserver answered")
)

// DNS header bits, from RFC 1035 section 4.1.1.
const (
	bitQR      = 1 << 15
	bitTC      = 1 << 9
	rcodeMask  = 0xf
	maxDNSSize = dns.MaxMsgSize
)

// forwarder sends a laptop's DNS queries to the cluster's nameservers as
// they are and returns the answers as they are, so record types, TTLs and
// EDNS options survive.
type forwarder struct {
	resolver
	timeout time.Duration // per nameserver and transport
}

// forward answers query: over UDP first, again over TCP when the answer is
// truncated, trying the next nameserver when one fails or answers SERVFAIL or
// REFUSED (the last such answer is returned if no nameserver does better).
func (f *forwarder) forward(ctx context.Context, query []byte) ([]byte, error) {
	var q dns.Msg
	if err := q.Unpack(query); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadQuery, err)
	}
	if q.Response {
		return nil, fmt.Errorf("%w: it is a response", errBadQuery)
	}
	var fallback []byte
	var errs []error
	for _, srv := range f.servers {
		server := srv.String()
		ans, hdr, err := f.exchange(ctx, "udp", server, query, q.Id)
		if err == nil && hdr.Bits&bitTC != 0 {
			ans, hdr, err = f.exchange(ctx, "tcp", server, query, q.Id)
		}
		if err != nil {
			if err := ctxDone(ctx); err != nil {
				return nil, fmt.Errorf("forward DNS query: %w", err)
			}
			errs = append(errs, err)
			continue
		}
		if rc := int(hdr.Bits & rcodeMask); rc == dns.RcodeServerFailure || rc == dns.RcodeRefused {
			fallback = ans
			continue
		}
		return ans, nil
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, fmt.Errorf("%w: %w", errNoAnswer, errors.Join(errs...))
}

// exchange sends query to server over network and returns the raw answer
// with its header. Over UDP, packets that are not the answer (another ID, not
// a response) are skipped as spoofed or stale.
func (f *forwarder) exchange(ctx context.Context, network, server string, query []byte, id uint16) ([]byte, dns.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: f.timeout}
	co, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, dns.Header{}, fmt.Errorf("dial nameserver %s over %s: %w", server, network, err)
	}
	defer co.Close()
	co.UDPSize = maxDNSSize // read whole answers: the query's EDNS0 size bounds what the server sends
	deadline, _ := ctx.Deadline()
	if err := co.SetDeadline(deadline); err != nil {
		return nil, dns.Header{}, fmt.Errorf("query nameserver %s over %s: %w", server, network, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = co.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := co.Write(query); err != nil {
		return nil, dns.Header{}, fmt.Errorf("query nameserver %s over %s: %w", server, network, err)
	}
	for {
		var hdr dns.Header
		ans, err := co.ReadMsgHeader(&hdr)
		if err != nil {
			return nil, dns.Header{}, fmt.Errorf("read answer of nameserver %s over %s: %w", server, network, err)
		}
		if hdr.Id == id && hdr.Bits&bitQR != 0 {
			return ans, hdr, nil
		}
		if network != "udp" {
			return nil, dns.Header{}, fmt.Errorf("read answer of nameserver %s over tcp: answer to another query (id %d, want %d)", server, hdr.Id, id)
		}
	}
}

// ctxDone is ctx.Err, also when ctx's deadline has passed but its timer has
// not fired yet (the socket deadline, set to the same instant, may win).
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}
