package dns

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// request is one client query as the handlers see it.
type request struct {
	name   string // lower-case, fully qualified
	qtype  uint16
	qclass uint16
	tcp    bool // arrived over TCP, so it goes upstream over TCP too
}

// answer is what a handler found: a private copy of the answering side's
// message, and the name it was asked when that differs from the client's.
type answer struct {
	msg   *mdns.Msg
	asked string
}

// handler is one link of the chain, CoreDNS style: it answers the query or
// passes it to the next link, explicitly.
type handler interface {
	serve(ctx context.Context, req request) (answer, error)
}

// clusterHandler sends names in the cluster domain, the --dns-include
// suffixes and reverse lookups of cluster addresses to the cluster as they are.
type clusterHandler struct {
	r    *Resolver
	next handler
}

func (h *clusterHandler) serve(ctx context.Context, req request) (answer, error) {
	if req.qclass != mdns.ClassINET || !h.r.isClusterName(req.name) {
		return h.next.serve(ctx, req)
	}
	m, err := h.r.exchange(ctx, viaCluster, req.name, req)
	return answer{msg: m}, err
}

// searchHandler does what a pod's search path does: it expands short names
// ("<svc>", "<svc>.<ns>", "<svc>.<ns>.svc") into cluster names, and passes the
// name on unchanged when the cluster has no such name.
type searchHandler struct {
	r    *Resolver
	next handler
}

func (h *searchHandler) serve(ctx context.Context, req request) (answer, error) {
	if req.qclass != mdns.ClassINET {
		return h.next.serve(ctx, req)
	}
	long, ok := h.r.expand(req.name)
	if !ok {
		return h.next.serve(ctx, req)
	}
	m, err := h.r.exchange(ctx, viaCluster, long, req)
	if err != nil {
		return answer{}, err
	}
	if m.Rcode == mdns.RcodeNameError {
		// Not a cluster name after all ("google.dev" with a namespace "dev").
		return h.next.serve(ctx, req)
	}
	return answer{msg: m, asked: long}, nil
}

// upstreamHandler is the end of the chain: the resolvers the machine had.
type upstreamHandler struct{ r *Resolver }

func (h *upstreamHandler) serve(ctx context.Context, req request) (answer, error) {
	m, err := h.r.exchange(ctx, viaUpstream, req.name, req)
	return answer{msg: m}, err
}

// via names the side that answers a query; it is part of the cache key so a
// change of routing never serves one side's answer for the other.
type via uint8

const (
	viaCluster via = iota + 1
	viaUpstream
)

func (v via) String() string {
	if v == viaCluster {
		return "cluster"
	}
	return "upstream"
}

var errNoCluster = errors.New("not connected to a cluster")

// exchange asks one side about name (with req's type and class), from the
// cache when it can. The message returned is the caller's to change.
func (r *Resolver) exchange(ctx context.Context, v via, name string, req request) (*mdns.Msg, error) {
	key := cacheKey{via: v, name: name, qtype: req.qtype, qclass: req.qclass}
	if m, age, ok := r.cache.get(key, r.now()); ok {
		r.stats.hits.Add(1)
		if v == viaCluster && age >= prefetchAfter {
			r.prefetch(key, req)
		}
		return m, nil
	}
	if v == viaCluster {
		if stale, failing, ok := r.cache.getStale(key, r.now()); ok {
			return r.askOrStale(ctx, key, req, stale, failing)
		}
	}
	return r.ask(ctx, key, req)
}

// askOrStale asks the cluster about key while stale, its answer past its
// time, stands by (RFC 8767): stale goes out when the cluster fails or
// has not answered within staleWait, and at once while it failed within
// failedFor (the cluster then asked again in the background).
func (r *Resolver) askOrStale(ctx context.Context, key cacheKey, req request, stale *mdns.Msg, failing bool) (*mdns.Msg, error) {
	if !failing {
		actx, cancel := context.WithTimeout(ctx, staleWait)
		m, err := r.ask(actx, key, req)
		cancel()
		if err == nil && !failure(m) {
			return m, nil
		}
	} else {
		r.prefetch(key, req)
	}
	r.stats.stale.Add(1)
	return stale, nil
}

// failure says whether m is the cluster failing to answer rather than an
// answer (RFC 8767: any rcode but NOERROR and NXDOMAIN).
func failure(m *mdns.Msg) bool {
	return m.Rcode != mdns.RcodeSuccess && m.Rcode != mdns.RcodeNameError
}

// ask asks the side key names about its name, and caches the answer; a
// failure to answer is noted on what the cache holds for the cluster.
func (r *Resolver) ask(ctx context.Context, key cacheKey, req request) (*mdns.Msg, error) {
	v, name := key.via, key.name
	asked := r.now()
	q := new(mdns.Msg)
	q.SetQuestion(name, req.qtype)
	q.Question[0].Qclass = req.qclass
	q.SetEdns0(ednsSize, false)

	var m *mdns.Msg
	var err error
	start := time.Now()
	switch v {
	case viaCluster:
		r.stats.cluster.Add(1)
		if r.cluster == nil {
			err = errNoCluster
			break
		}
		m, err = r.cluster.Exchange(ctx, q)
		if m != nil {
			m = m.Copy() // the Exchanger may keep its message; we edit ours
		}
	default:
		r.stats.upstream.Add(1)
		m, err = r.upstream.exchange(ctx, q, req.tcp)
	}
	if err == nil {
		err = checkAnswer(q, m)
	}
	if r.observe != nil {
		r.observe(v.String(), time.Since(start), err)
	}
	if v == viaCluster && (err != nil || failure(m)) {
		r.cache.markFailed(key, r.now())
	}
	if err != nil {
		return nil, fmt.Errorf("ask %s about %s %s: %w", v, name, mdns.Type(req.qtype), err)
	}
	stripOPT(m)
	r.cache.put(key, m, asked, r.negTTL)
	return m, nil
}

// checkAnswer rejects an answer to some other question: from a confused or
// spoofing server, it must not reach the client or the cache.
func checkAnswer(q, m *mdns.Msg) error {
	if m == nil {
		return errors.New("no answer")
	}
	if len(m.Question) == 0 {
		// Some servers leave the question out of error answers.
		m.Question = []mdns.Question{q.Question[0]}
		return nil
	}
	got, want := m.Question[0], q.Question[0]
	if len(m.Question) != 1 || !strings.EqualFold(got.Name, want.Name) || got.Qtype != want.Qtype || got.Qclass != want.Qclass {
		return fmt.Errorf("answer is for %s %s, not the question asked", got.Name, mdns.Type(got.Qtype))
	}
	return nil
}
