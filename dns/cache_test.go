package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
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

// TestClusterAnswersStayFresh: a cluster answer goes out with a TTL of at
// most a second and is served for at most a second, so a changed Service
// shows within that; a hit on one older than half of that asks the
// cluster again in the background, so a name in use is always answered
// from the cache, and with the new address once the cluster has it.
func TestClusterAnswersStayFresh(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo"})
	asked := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for r.prefetches.len() > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // a refresh under way: until it is stored
		}
		if got := len(cluster.queries()); got != n {
			t.Fatalf("the cluster was asked %d times, want %d", got, n)
		}
	}
	answer := func(want string) {
		t.Helper()
		m := ask(t, r, "echo.demo.", mdns.TypeA)
		if got := rrStrings(m.Answer); !slices.Equal(got, []string{want}) {
			t.Fatalf("answer %q, want %q", got, want)
		}
	}
	answer("echo.demo. 1 IN A 10.96.1.2") // the cluster's TTL was 30
	asked(1)
	clock.advance(400 * time.Millisecond)
	answer("echo.demo. 1 IN A 10.96.1.2") // young: from the cache alone
	asked(1)

	// The Service is re-addressed; the next hit past half a second still
	// gets the cached answer, and refreshes it meanwhile.
	cluster.mu.Lock()
	cluster.zone = newZone(t, "echo.demo.svc.cluster.local. 30 IN A 10.96.9.9")
	cluster.mu.Unlock()
	clock.advance(200 * time.Millisecond)
	answer("echo.demo. 1 IN A 10.96.1.2")
	asked(2)
	answer("echo.demo. 1 IN A 10.96.9.9")
	if st := r.Stats(); st.CacheHits != 3 || st.ClusterQueries != 2 {
		t.Errorf("stats %+v: want 3 hits, 2 queries to the cluster (a miss and a refresh)", st)
	}

	// Unused for longer than a second, the answer is gone: asked again.
	clock.advance(clusterFresh)
	answer("echo.demo. 1 IN A 10.96.9.9")
	asked(3)
}

// TestClusterAnswersStandInWhenTheClusterCannot: past its second, a
// cluster answer is still given (with a TTL of a second) while the cluster
// fails to answer, for up to staleFor (RFC 8767); once the cluster
// answers again, its answer is given; and never past staleFor.
func TestClusterAnswersStandInWhenTheClusterCannot(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo"})
	// The full name: an NXDOMAIN for it is the cluster's last word, where
	// one for a short name would be asked upstream next.
	const fqdn = "echo.demo.svc.cluster.local."
	ask(t, r, fqdn, mdns.TypeA)
	cluster.setErr(errors.New("CoreDNS is restarting"))
	clock.advance(2 * clusterFresh)
	m := ask(t, r, fqdn, mdns.TypeA)
	if got := rrStrings(m.Answer); m.Rcode != mdns.RcodeSuccess || !slices.Equal(got, []string{fqdn + " 1 IN A 10.96.1.2"}) {
		t.Errorf("while the cluster fails: %s %q, want the last answer", mdns.RcodeToString[m.Rcode], got)
	}
	if st := r.Stats(); st.Stale != 1 {
		t.Errorf("stats %+v: want one stale answer", st)
	}
	clock.advance(staleFor)
	if m := ask(t, r, fqdn, mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
		t.Errorf("past staleFor: %s %v, want SERVFAIL", mdns.RcodeToString[m.Rcode], m.Answer)
	}
	// The answer past staleFor is gone for good: the cluster's next one
	// is what counts, and a failure to answer (SERVFAIL, REFUSED) right
	// after it gets that one.
	cluster.setErr(nil)
	ask(t, r, fqdn, mdns.TypeA)
	for _, rcode := range []int{mdns.RcodeServerFailure, mdns.RcodeRefused} {
		cluster.mu.Lock()
		cluster.rcode = rcode
		cluster.mu.Unlock()
		clock.advance(2 * clusterFresh)
		if m := ask(t, r, fqdn, mdns.TypeA); m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("the cluster answering %s: %s %v, want the last answer", mdns.RcodeToString[rcode], mdns.RcodeToString[m.Rcode], m.Answer)
		}
	}

	// The Service is deleted, and the cluster says so with an NXDOMAIN it
	// asks no one to keep (an SOA TTL of 0): the old address must not
	// stand in for it when the cluster fails next.
	cluster.mu.Lock()
	cluster.rcode, cluster.soaTTL, cluster.zone = 0, 0, newZone(t)
	cluster.mu.Unlock()
	clock.advance(failedFor)
	if m := ask(t, r, fqdn, mdns.TypeA); m.Rcode != mdns.RcodeNameError {
		t.Fatalf("the deleted Service: %s %v", mdns.RcodeToString[m.Rcode], m.Answer)
	}
	cluster.setErr(errors.New("down again"))
	clock.advance(2 * clusterFresh)
	if m := ask(t, r, fqdn, mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
		t.Errorf("after an NXDOMAIN, the cluster failing: %s %v, want SERVFAIL, not the deleted address", mdns.RcodeToString[m.Rcode], m.Answer)
	}
}

// TestClusterStaleAnswerWaitsOnlySoLong: a cluster that does not answer
// at all (the session reconnecting) holds a lookup that has a stale answer
// for staleWait, not the whole query timeout; the next lookups get the
// stale answer at once.
func TestClusterStaleAnswerWaitsOnlySoLong(t *testing.T) {
	cluster := &slowCluster{fakeCluster: newFakeCluster(t, clusterRecords...)}
	r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo"})
	ask(t, r, "echo.demo.", mdns.TypeA)
	cluster.hang.Store(true)
	clock.advance(2 * clusterFresh)
	for i, limit := range []time.Duration{staleWait + time.Second, 100 * time.Millisecond} {
		start := time.Now()
		m := ask(t, r, "echo.demo.", mdns.TypeA)
		if took := time.Since(start); took > limit || len(m.Answer) != 1 {
			t.Errorf("lookup %d with the cluster hanging: %v after %s, want the stale answer within %s", i+1, m.Answer, took, limit)
		}
	}
}

// slowCluster hangs every Exchange until its context ends while hang is set.
type slowCluster struct {
	*fakeCluster
	hang atomic.Bool
}

func (c *slowCluster) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	if c.hang.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return c.fakeCluster.Exchange(ctx, q)
}

// TestCacheKeepsTheLaterQuestionsAnswer: an answer to an earlier question
// that comes back last does not replace the later one's.
func TestCacheKeepsTheLaterQuestionsAnswer(t *testing.T) {
	c := newCache(10)
	now := time.Now()
	k := cacheKey{via: viaCluster, name: "a."}
	c.put(k, positive("a.", 60), now.Add(time.Millisecond), time.Second) // asked later, back first
	older := positive("a.", 60)
	older.Answer[0].(*mdns.A).A = net.IPv4(192, 0, 2, 1)
	c.put(k, older, now, time.Second)
	m, _, ok := c.get(k, now.Add(2*time.Millisecond))
	if !ok || m.Answer[0].(*mdns.A).A.Equal(net.IPv4(192, 0, 2, 1)) {
		t.Errorf("the earlier question's answer replaced the later one's: %v", m)
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
		// The cluster's answers are kept a second at most (clusterFresh).
		{"NXDOMAIN for a second, not the default 5s", 0, 30, "nope.demo.svc.cluster.local.", mdns.TypeA, clusterFresh},
		{"NXDOMAIN for a shorter configured TTL", 300 * time.Millisecond, 30, "nope.demo.svc.cluster.local.", mdns.TypeA, 300 * time.Millisecond},
		{"NODATA too", 0, 30, "echo.demo.svc.cluster.local.", mdns.TypeTXT, clusterFresh},
		{"SOA TTL 0 is not cached", 0, 0, "nope.demo.svc.cluster.local.", mdns.TypeA, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := newFakeCluster(t, clusterRecords...)
			cluster.soaTTL = tt.soaTTL
			r, clock := newClockedResolver(t, cluster, Config{Namespace: "demo", NegativeTTL: tt.negTTL})
			ask(t, r, tt.qname, tt.qtype)
			if tt.wantFor > 0 {
				// Before expiry, and before a hit would refresh it.
				before := min(tt.wantFor, prefetchAfter) - time.Millisecond
				clock.advance(before)
				m := ask(t, r, tt.qname, tt.qtype)
				if len(m.Answer) != 0 || len(cluster.queries()) != 1 {
					t.Fatalf("before expiry: answer %v, cluster asked %q", m, cluster.queries())
				}
				for _, rr := range m.Ns {
					if soa, ok := rr.(*mdns.SOA); ok && (soa.Hdr.Ttl > 1 || soa.Minttl > 1) {
						t.Errorf("a cluster SOA handed out with TTL %d, minimum %d: want a second at most", soa.Hdr.Ttl, soa.Minttl)
					}
				}
				clock.advance(tt.wantFor - before - time.Millisecond)
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
	if _, _, ok := c.get(keys[0], now); ok {
		t.Error("oldest entry still cached")
	}
	for _, k := range keys[1:] {
		if _, _, ok := c.get(k, now); !ok {
			t.Errorf("%s evicted", k.name)
		}
	}
	c.put(keys[1], positive("b.", 60), now, time.Second) // replacing makes it newest
	c.put(keys[0], positive("a.", 60), now, time.Second)
	if _, _, ok := c.get(keys[2], now); ok || c.len() != 2 {
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
	got, _, _ := c.get(k, now)
	got.Answer[0].Header().Name = "changed-after-get."
	again, _, _ := c.get(k, now)
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
