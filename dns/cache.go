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
}

// cache keeps answers for as long as their records live, bounded in size; when
// full it drops the entry stored longest ago.
type cache struct {
	max int

	mu      sync.Mutex // guards following
	entries map[cacheKey]*list.Element
	order   list.List // of *cacheEntry, oldest first
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[cacheKey]*list.Element)}
}

// get returns a copy of the answer stored under k, with its TTLs lowered by
// the time it spent in the cache.
func (c *cache) get(k cacheKey, now time.Time) (*mdns.Msg, bool) {
	c.mu.Lock()
	el, ok := c.entries[k]
	if !ok {
		c.mu.Unlock()
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.removeLocked(el)
		c.mu.Unlock()
		return nil, false
	}
	m, stored := e.msg.Copy(), e.stored
	c.mu.Unlock()

	age := uint32(now.Sub(stored) / time.Second)
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			h.Ttl -= min(h.Ttl, age)
		}
	}
	return m, true
}

// put stores a copy of m under k for as long as cacheTTL allows.
func (c *cache) put(k cacheKey, m *mdns.Msg, now time.Time, negTTL time.Duration) {
	ttl, ok := cacheTTL(m, negTTL)
	if !ok {
		return
	}
	e := &cacheEntry{key: k, msg: m.Copy(), stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.removeLocked(el)
	}
	c.entries[k] = c.order.PushBack(e)
	for c.order.Len() > c.max {
		c.removeLocked(c.order.Front())
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
