package dns

import (
	"context"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"

	mdns "github.com/miekg/dns"
)

// ednsSize is the UDP payload size we advertise: the DNS flag day 2020 value,
// which avoids IP fragmentation.
const ednsSize = 1232

// serve answers one client query; ctx bounds the work. It must survive any
// message a hostile client can make, so it checks everything it relies on.
func (r *Resolver) serve(ctx context.Context, w mdns.ResponseWriter, q *mdns.Msg) {
	if q == nil || q.Response {
		return // never answer answers: that is how loops and reflection start
	}
	if r.client != nil && !r.client(remoteAddr(w)) {
		r.stats.refused.Add(1)
		r.write(w, q, rcodeReply(q, mdns.RcodeRefused))
		return
	}
	r.stats.queries.Add(1)
	defer func() {
		// A bug must cost one query, not the daemon and the laptop's DNS with it.
		if p := recover(); p != nil {
			r.panics.Add(1)
			r.stats.failures.Add(1)
			r.logger.Error("panic answering a query", "panic", p, "stack", string(debug.Stack()))
			r.write(w, q, rcodeReply(q, mdns.RcodeServerFailure))
		}
	}()
	switch {
	case q.Opcode != mdns.OpcodeQuery:
		r.write(w, q, rcodeReply(q, mdns.RcodeNotImplemented))
		return
	case len(q.Question) != 1:
		r.write(w, q, rcodeReply(q, mdns.RcodeFormatError))
		return
	}
	req := request{
		name:   fqdnLower(q.Question[0].Name),
		qtype:  q.Question[0].Qtype,
		qclass: q.Question[0].Qclass,
		tcp:    isTCP(w),
	}
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	ans, err := r.chain.serve(ctx, req)
	if err != nil {
		r.stats.failures.Add(1)
		r.logger.Debug("query failed", "name", req.name, "type", mdns.Type(req.qtype), "err", err)
		r.warn.Do(func() {
			r.logger.Warn("query failed; answering SERVFAIL", "name", req.name, "type", mdns.Type(req.qtype), "err", err)
		})
		r.write(w, q, rcodeReply(q, mdns.RcodeServerFailure))
		return
	}
	r.write(w, q, reply(q, ans))
}

// reply turns the answering side's message into the answer to q: q's ID and
// question, and the records for an expanded name put back under q's name.
func reply(q *mdns.Msg, ans answer) *mdns.Msg {
	m := ans.msg // a private copy
	m.Id = q.Id
	m.Response = true
	m.Opcode = mdns.OpcodeQuery
	m.RecursionDesired = q.RecursionDesired
	m.RecursionAvailable = true
	m.Question = []mdns.Question{q.Question[0]}
	if ans.asked != "" {
		renameOwner(m, ans.asked, q.Question[0].Name)
	}
	return m
}

// renameOwner moves records owned by the expanded name back under the name
// the client asked; CNAME and SRV targets keep their cluster names, so the
// client can still follow them.
func renameOwner(m *mdns.Msg, from, to string) {
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); strings.EqualFold(h.Name, from) {
				h.Name = to
			}
		}
	}
}

// rcodeReply is an empty answer to q with the given rcode.
func rcodeReply(q *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	return m
}

// write sends m to the client with EDNS0 and size as the client asked for.
func (r *Resolver) write(w mdns.ResponseWriter, q, m *mdns.Msg) {
	size := mdns.MinMsgSize
	if opt := q.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), mdns.MinMsgSize)
		m.SetEdns0(ednsSize, opt.Do())
	}
	if isTCP(w) {
		size = mdns.MaxMsgSize
	}
	m.Truncate(size)
	if err := w.WriteMsg(m); err != nil {
		r.logger.Debug("write answer", "err", err)
	}
}

// stripOPT removes the EDNS0 record, which is hop by hop: the answering side's
// must not reach our client.
func stripOPT(m *mdns.Msg) {
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != mdns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
}

// isTCP reports whether the query came over a stream.
// remoteAddr is where a query came from; the zero Addr when unknown.
func remoteAddr(w mdns.ResponseWriter) netip.Addr {
	var ap netip.AddrPort
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return ap.Addr().Unmap()
}

func isTCP(w mdns.ResponseWriter) bool {
	a := w.RemoteAddr()
	if a == nil {
		return false
	}
	if _, ok := a.(*net.TCPAddr); ok {
		return true
	}
	return strings.HasPrefix(a.Network(), "tcp")
}
