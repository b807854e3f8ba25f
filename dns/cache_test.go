package dns

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeClock is a settable r.now.
type fakeClock struct {
	mu sync.Mutex // guards following
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newClockedResolver is a resolver on a fake clock, asked through ServeDNS.
func newClockedResolver(t *testing.T, cluster Exchanger, cfg Config) (*Resolver, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := NewResolver(testLogger(t), cluster, cfg)
	r.now = clock.now
	r.SetNamespaces([]string{"demo"})
	t.Cleanup(func() { r.Close() })
	return r, clock
}

// ask sends one query to r's handler, as if over UDP.
func ask(t *testing.T, r *Resolver, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	w := &fakeWriter{}
	r.ServeDNS(w, q)
	if w.msg == nil {
		t.Fatalf("no answer to %s", name)
	}
	return w.msg
}

func TestCacheKeepsAndDecrementsTTLs(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo"})
	steps := []struct {
		after   time.Duration
		wantTTL uint32
		asks    int // cluster queries so far
	}{
		{0, 30, 1},
		{10 * time.Second, 20, 1},
		{19*time.Second + 500*time.Millisecond, 1, 1}, // 29.5 s old: whole seconds only
		{500 * time.Millisecond, 30, 2},               // 30 s old: expired, asked again
		{time.Second, 29, 2},
	}
	for i, s := range steps {
		clock.advance(s.after)
		m := ask(t, r, "echo.demo.", mdns.TypeA)
		if len(m.Answer) != 1 || m.Answer[0].Header().Ttl != s.wantTTL || m.Answer[0].Header().Name != "echo.demo." {
			t.Errorf("step %d: answer %v, want TTL %d", i, m.Answer, s.wantTTL)
		}
		if n := len(cluster.queries()); n != s.asks {
			t.Errorf("step %d: cluster asked %d times, want %d", i, n, s.asks)
		}
	}
	if st := r.Stats(); st.CacheHits != 3 || st.ClusterQueries != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestCacheDecrementsUpstreamTTLs(t *testing.T) {
	up := startUpstream(t, upstreamRecords...)
	r, clock := newClockedResolver(t, nil, Config{Upstreams: []netip.AddrPort{up.addr}})
	if m := ask(t, r, "example.com.", mdns.TypeA); m.Answer[0].Header().Ttl != 300 {
		t.Errorf("first answer %v", m.Answer)
	}
	clock.advance(100 * time.Second)
	if m := ask(t, r, "example.com.", mdns.TypeA); m.Answer[0].Header().Ttl != 200 {
		t.Errorf("cached answer %v", m.Answer)
	}
	if n := len(up.queries()); n != 1 {
		t.Errorf("upstream asked %d times", n)
	}
}

func TestNegativeCacheExpires(t *testing.T) {
	tests := []struct {
		name    string
		negTTL  time.Duration
		soaTTL  uint32
		qname   string
		qtype   uint16
		wantFor time.Duration
	}{
		{"NXDOMAIN for the default 5s", 0, 30, "nope.demo.svc.cluster.local.", mdns.TypeA, 5 * time.Second},
		{"NXDOMAIN for the configured TTL", 2 * time.Second, 30, "nope.demo.svc.cluster.local.", mdns.TypeA, 2 * time.Second},
		{"NXDOMAIN for a shorter SOA minimum", 0, 3, "nope.demo.svc.cluster.local.", mdns.TypeA, 3 * time.Second},
		{"NODATA too", 0, 30, "echo.demo.svc.cluster.local.", mdns.TypeTXT, 5 * time.Second},
		{"SOA TTL 0 is not cached", 0, 0, "nope.demo.svc.cluster.local.", mdns.TypeA, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := newFakeCluster(t, clusterRecords...)
			cluster.soaTTL = tt.soaTTL
			r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo", NegativeTTL: tt.negTTL})
			ask(t, r, tt.qname, tt.qtype)
			if tt.wantFor > 0 {
				clock.advance(tt.wantFor - time.Millisecond)
				m := ask(t, r, tt.qname, tt.qtype)
				if len(m.Answer) != 0 || len(cluster.queries()) != 1 {
					t.Fatalf("before expiry: answer %v, cluster asked %q", m, cluster.queries())
				}
			}
			clock.advance(time.Millisecond)
			ask(t, r, tt.qname, tt.qtype)
			if n := len(cluster.queries()); n != 2 {
				t.Errorf("after expiry the cluster was asked %d times, want 2", n)
			}
		})
	}
}

func TestSingleLabelFallbackIsCached(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	up := startUpstream(t, upstreamRecords...)
	r, _ := newClockedResolver(t, cluster, Config{Namespace: "demo", Upstreams: []netip.AddrPort{up.addr}})
	for range 3 {
		m := ask(t, r, "nothere.", mdns.TypeA)
		if got := rrStrings(m.Answer); !slices.Equal(got, []string{"nothere. 120 IN A 192.0.2.99"}) {
			t.Errorf("answer %q", got)
		}
	}
	if len(cluster.queries()) != 1 || len(up.queries()) != 1 {
		t.Errorf("cluster asked %q, upstream asked %q; want once each", cluster.queries(), up.queries())
	}
}

func TestCacheEvictsOldest(t *testing.T) {
	c := newCache(2)
	now := time.Now()
	keys := []cacheKey{{name: "a."}, {name: "b."}, {name: "c."}}
	for _, k := range keys {
		c.put(k, positive(k.name, 60), now, time.Second)
	}
	if _, ok := c.get(keys[0], now); ok {
		t.Error("oldest entry still cached")
	}
	for _, k := range keys[1:] {
		if _, ok := c.get(k, now); !ok {
			t.Errorf("%s evicted", k.name)
		}
	}
	c.put(keys[1], positive("b.", 60), now, time.Second) // replacing makes it newest
	c.put(keys[0], positive("a.", 60), now, time.Second)
	if _, ok := c.get(keys[2], now); ok || c.len() != 2 {
		t.Errorf("c. should have gone; %d entries", c.len())
	}
}

func TestCacheHandsOutCopies(t *testing.T) {
	c := newCache(10)
	now := time.Now()
	k := cacheKey{name: "a."}
	m := positive("a.", 60)
	c.put(k, m, now, time.Second)
	m.Answer[0].Header().Name = "changed-after-put."
	got, _ := c.get(k, now)
	got.Answer[0].Header().Name = "changed-after-get."
	again, _ := c.get(k, now)
	if name := again.Answer[0].Header().Name; name != "a." {
		t.Errorf("cached record renamed to %q", name)
	}
}

func TestCacheTTL(t *testing.T) {
	soa := func(ttl, minttl uint32) mdns.RR {
		return &mdns.SOA{Hdr: mdns.RR_Header{Name: "z.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl}, Minttl: minttl}
	}
	withRcode := func(m *mdns.Msg, rcode int) *mdns.Msg { m.Rcode = rcode; return m }
	truncated := positive("a.", 60)
	truncated.Truncated = true
	twoTTLs := positive("a.", 60)
	twoTTLs.Answer = append(twoTTLs.Answer, positive("a.", 7).Answer...)
	tests := []struct {
		name string
		msg  *mdns.Msg
		want time.Duration
		ok   bool
	}{
		{"positive", positive("a.", 60), 60 * time.Second, true},
		{"least TTL", twoTTLs, 7 * time.Second, true},
		{"TTL 0", positive("a.", 0), 0, false},
		{"truncated", truncated, 0, false},
		{"SERVFAIL", withRcode(new(mdns.Msg), mdns.RcodeServerFailure), 0, false},
		{"REFUSED", withRcode(new(mdns.Msg), mdns.RcodeRefused), 0, false},
		{"NXDOMAIN without SOA", withRcode(new(mdns.Msg), mdns.RcodeNameError), 5 * time.Second, true},
		{"NXDOMAIN with long SOA", withRcode(&mdns.Msg{Ns: []mdns.RR{soa(60, 60)}}, mdns.RcodeNameError), 5 * time.Second, true},
		{"NXDOMAIN with short SOA minimum", withRcode(&mdns.Msg{Ns: []mdns.RR{soa(60, 2)}}, mdns.RcodeNameError), 2 * time.Second, true},
		{"NODATA with short SOA TTL", &mdns.Msg{Ns: []mdns.RR{soa(1, 60)}}, time.Second, true},
	}
	for _, tt := range tests {
		got, ok := cacheTTL(tt.msg, 5*time.Second)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: cacheTTL = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func positive(name string, ttl uint32) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	m.Response = true
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: ttl}, A: []byte{10, 0, 0, 1}}}
	return m
}
