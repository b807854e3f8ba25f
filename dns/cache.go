package dns

import (
	"container/list"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// cacheKey is what an answer is cached under: the question as asked of one side.
type cacheKey struct {
	via    via
	name   string // lower-case, fully qualified
	qtype  uint16
	qclass uint16
}

type cacheEntry struct {
	key     cacheKey
	msg     *mdns.Msg // never handed out; get returns copies
	stored  time.Time
	expires time.Time
	stale   time.Time // until when getStale may still hand it out
	failed  time.Time // when the cluster last failed to answer anew
}

// cache keeps answers for as long as their records live (the cluster's for
// at most clusterFresh), bounded in size; when full it drops the entry
// stored longest ago.
type cache struct {
	max int

	mu      sync.Mutex // guards following
	entries map[cacheKey]*list.Element
	order   list.List // of *cacheEntry, oldest first
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[cacheKey]*list.Element)}
}

// How fresh the cluster's answers stay. CoreDNS answers from its watch
// of Services and EndpointSlices, and a Service created, deleted or
// re-addressed must look so on the laptop within about a second, as it
// does in the cluster: a cluster answer is served for at most
// clusterFresh, and with a TTL no longer than that, so that no cache
// after this one (systemd-resolved's, an application's) keeps it longer.
// A name in use does not pay for that: a hit on an answer older than
// prefetchAfter is answered from the cache and asks the cluster again
// meanwhile (Resolver.prefetch), so a name asked more often than once a
// second is never missed.
const (
	clusterFresh  = time.Second
	prefetchAfter = clusterFresh / 2
	// staleFor is how long past its expiry a cluster answer may still be
	// given when the cluster cannot answer (RFC 8767): CoreDNS restarting
	// or the session reconnecting, where an application would rather have
	// the address it had a second ago than an error.
	staleFor = 30 * time.Second
	// staleWait is how long a lookup waits for the cluster before a stale
	// answer goes out instead (RFC 8767's client response timer), under
	// the 2 s a stub resolver such as dig or resolved waits; failedFor is
	// how long after a failure stale answers go out at once, the cluster
	// asked again in the background.
	staleWait = 1500 * time.Millisecond
	failedFor = 5 * time.Second
)

// get returns a copy of the answer stored under k, with its TTLs lowered by
// the time it spent in the cache, and that time.
func (c *cache) get(k cacheKey, now time.Time) (*mdns.Msg, time.Duration, bool) {
	c.mu.Lock()
	el, ok := c.entries[k]
	if !ok {
		c.mu.Unlock()
		return nil, 0, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		if !now.Before(e.stale) {
			c.removeLocked(el)
		}
		c.mu.Unlock()
		return nil, 0, false
	}
	m, stored := e.msg.Copy(), e.stored
	c.mu.Unlock()

	age := now.Sub(stored)
	secs := uint32(age / time.Second)
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			h.Ttl -= min(h.Ttl, secs)
		}
	}
	return m, age, true
}

// put stores a copy of m under k for as long as cacheTTL allows, asked at
// asked: an answer asked after the one stored wins, whichever came back
// first. The cluster's answers are kept for at most clusterFresh, and
// their TTLs cut to that whether kept or not (m's too: the client gets the
// same); an answer (not a failure) the cluster gave that cannot be kept,
// with a TTL of 0, still replaces what was stored, so that an old address
// cannot stand in for it.
func (c *cache) put(k cacheKey, m *mdns.Msg, asked time.Time, negTTL time.Duration) {
	if k.via == viaCluster {
		capTTL(m, uint32(clusterFresh/time.Second))
	}
	ttl, ok := cacheTTL(m, negTTL)
	if !ok && (k.via != viaCluster || failure(m)) {
		return // a failure leaves a stale answer standing by
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, had := c.entries[k]; had {
		if el.Value.(*cacheEntry).stored.After(asked) {
			return // a later question's answer is stored already
		}
		c.removeLocked(el)
	}
	if !ok {
		return
	}
	if k.via == viaCluster {
		ttl = min(ttl, clusterFresh)
	}
	e := &cacheEntry{key: k, msg: m.Copy(), stored: asked, expires: asked.Add(ttl)}
	e.stale = e.expires
	if k.via == viaCluster {
		e.stale = e.expires.Add(staleFor)
	}
	c.entries[k] = c.order.PushBack(e)
	for c.order.Len() > c.max {
		c.removeLocked(c.order.Front())
	}
}

// getStale returns a copy of an expired answer under k that may still
// stand in for one the cluster cannot give, with TTLs of a second, and
// whether the cluster failed to answer anew within failedFor.
func (c *cache) getStale(k cacheKey, now time.Time) (m *mdns.Msg, failing, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return nil, false, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.stale) {
		c.removeLocked(el)
		return nil, false, false
	}
	m = e.msg.Copy()
	capTTL(m, 1)
	return m, now.Sub(e.failed) < failedFor, true
}

// markFailed notes that the cluster failed to answer anew about k.
func (c *cache) markFailed(k cacheKey, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		el.Value.(*cacheEntry).failed = now
	}
}

func (c *cache) removeLocked(el *list.Element) {
	delete(c.entries, el.Value.(*cacheEntry).key)
	c.order.Remove(el)
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// cacheTTL says how long m may be served from the cache: positive answers for
// their shortest TTL; NXDOMAIN and NODATA for negTTL, or the zone's negative
// TTL (RFC 2308) if shorter. Failures and truncated answers are not kept.
func cacheTTL(m *mdns.Msg, negTTL time.Duration) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	switch {
	case m.Rcode == mdns.RcodeNameError || (m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 0):
		ttl := negTTL
		for _, rr := range m.Ns {
			if soa, ok := rr.(*mdns.SOA); ok {
				ttl = min(ttl, time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second)
			}
		}
		return ttl, ttl > 0
	case m.Rcode == mdns.RcodeSuccess:
		least := ^uint32(0)
		for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range sec {
				if rr.Header().Rrtype != mdns.TypeOPT {
					least = min(least, rr.Header().Ttl)
				}
			}
		}
		ttl := time.Duration(least) * time.Second
		return ttl, ttl > 0
	default:
		return 0, false
	}
}

// capTTL lowers m's TTLs to at most max seconds (an SOA's minimum too,
// which bounds how long a negative answer is kept).
func capTTL(m *mdns.Msg, max uint32) {
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != mdns.TypeOPT {
				h.Ttl = min(h.Ttl, max)
			}
			if soa, ok := rr.(*mdns.SOA); ok {
				soa.Minttl = min(soa.Minttl, max)
			}
		}
	}
}
