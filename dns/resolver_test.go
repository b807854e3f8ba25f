package dns

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// clusterRecords is what the fake cluster's CoreDNS knows.
var clusterRecords = []string{
	"echo.demo.svc.cluster.local. 30 IN A 10.96.1.2",
	"echo.demo.svc.cluster.local. 30 IN AAAA fd00::1:2",
	"_http._tcp.echo.demo.svc.cluster.local. 30 IN SRV 0 100 80 echo.demo.svc.cluster.local.",
	"web.orders.svc.cluster.local. 15 IN A 10.96.7.7",
	"web-0.nginx.orders.svc.cluster.local. 15 IN A 10.244.0.9",
	"ext.demo.svc.cluster.local. 20 IN CNAME api.example.com.",
	"2.1.96.10.in-addr.arpa. 30 IN PTR echo.demo.svc.cluster.local.",
	"2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 30 IN PTR echo.demo.svc.cluster.local.",
	"db.corp.internal. 40 IN A 10.50.0.1",
	"10-244-0-9.orders.pod.cluster.local. 30 IN A 10.244.0.9",
}

var upstreamRecords = []string{
	"example.com. 300 IN A 93.184.216.34",
	"api.example.com. 300 IN A 93.184.216.40",
	"nothere. 120 IN A 192.0.2.99",
	"echo.nowhere. 120 IN A 192.0.2.7",
	"google.dev. 120 IN A 192.0.2.8",
	"4.3.2.1.in-addr.arpa. 300 IN PTR one.example.com.",
	"example.com. 300 IN TXT \"v=spf1 -all\"",
	"example.com. 300 IN MX 10 mail.example.com.",
}

func newTestSetup(t *testing.T) (*served, *fakeCluster, *fakeUpstream) {
	t.Helper()
	cluster := newFakeCluster(t, clusterRecords...)
	up := startUpstream(t, upstreamRecords...)
	s := serveResolver(t, cluster, Config{
		ClusterDomain: "cluster.local",
		Namespace:     "demo",
		Include:       []string{".corp.internal"},
		Upstreams:     []netip.AddrPort{up.addr},
	})
	s.SetNamespaces([]string{"demo", "orders", "Billing", "dev"})
	s.SetClusterSubnets([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/64")})
	return s, cluster, up
}

func TestRouting(t *testing.T) {
	tests := []struct {
		name, qname string
		qtype       uint16
		wantAnswer  []string
		wantCluster []string // names the cluster was asked
		wantUp      []string // names the upstream was asked
		wantRcode   int
	}{
		{
			name: "cluster domain goes to the cluster as is", qname: "echo.demo.svc.cluster.local.", qtype: mdns.TypeA,
			wantAnswer:  []string{"echo.demo.svc.cluster.local. 1 IN A 10.96.1.2"},
			wantCluster: []string{"echo.demo.svc.cluster.local. A"},
		},
		{
			name: "include suffix goes to the cluster", qname: "db.corp.internal.", qtype: mdns.TypeA,
			wantAnswer:  []string{"db.corp.internal. 1 IN A 10.50.0.1"},
			wantCluster: []string{"db.corp.internal. A"},
		},
		{
			name: "svc.ns expands and comes back under the asked name", qname: "echo.demo.", qtype: mdns.TypeA,
			wantAnswer:  []string{"echo.demo. 1 IN A 10.96.1.2"},
			wantCluster: []string{"echo.demo.svc.cluster.local. A"},
		},
		{
			name: "AAAA passes through", qname: "echo.demo.", qtype: mdns.TypeAAAA,
			wantAnswer:  []string{"echo.demo. 1 IN AAAA fd00::1:2"},
			wantCluster: []string{"echo.demo.svc.cluster.local. AAAA"},
		},
		{
			name: "svc.ns.svc expands", qname: "web.orders.svc.", qtype: mdns.TypeA,
			wantAnswer:  []string{"web.orders.svc. 1 IN A 10.96.7.7"},
			wantCluster: []string{"web.orders.svc.cluster.local. A"},
		},
		{
			name: "headless pod name under a namespace", qname: "web-0.nginx.orders.", qtype: mdns.TypeA,
			wantAnswer:  []string{"web-0.nginx.orders. 1 IN A 10.244.0.9"},
			wantCluster: []string{"web-0.nginx.orders.svc.cluster.local. A"},
		},
		{
			name: "pod name", qname: "10-244-0-9.orders.pod.", qtype: mdns.TypeA,
			wantAnswer:  []string{"10-244-0-9.orders.pod. 1 IN A 10.244.0.9"},
			wantCluster: []string{"10-244-0-9.orders.pod.cluster.local. A"},
		},
		{
			name: "SRV form keeps its target's cluster name", qname: "_http._tcp.echo.demo.", qtype: mdns.TypeSRV,
			wantAnswer:  []string{"_http._tcp.echo.demo. 1 IN SRV 0 100 80 echo.demo.svc.cluster.local."},
			wantCluster: []string{"_http._tcp.echo.demo.svc.cluster.local. SRV"},
		},
		{
			name: "SRV form in the connected namespace", qname: "_http._tcp.echo.", qtype: mdns.TypeSRV,
			wantAnswer:  []string{"_http._tcp.echo. 1 IN SRV 0 100 80 echo.demo.svc.cluster.local."},
			wantCluster: []string{"_http._tcp.echo.demo.svc.cluster.local. SRV"},
		},
		{
			name: "single label is in the connected namespace", qname: "echo.", qtype: mdns.TypeA,
			wantAnswer:  []string{"echo. 1 IN A 10.96.1.2"},
			wantCluster: []string{"echo.demo.svc.cluster.local. A"},
		},
		{
			name: "single label the cluster lacks falls back upstream", qname: "nothere.", qtype: mdns.TypeA,
			wantAnswer:  []string{"nothere. 120 IN A 192.0.2.99"},
			wantCluster: []string{"nothere.demo.svc.cluster.local. A"},
			wantUp:      []string{"udp nothere. A"},
		},
		{
			// A namespace named like a top-level domain never takes the
			// world's names: the cluster is not even asked.
			name: "namespace that is also a TLD is the world's", qname: "google.dev.", qtype: mdns.TypeA,
			wantAnswer: []string{"google.dev. 120 IN A 192.0.2.8"},
			wantUp:     []string{"udp google.dev. A"},
		},
		{
			name: "unknown namespace goes upstream unchanged", qname: "echo.nowhere.", qtype: mdns.TypeA,
			wantAnswer: []string{"echo.nowhere. 120 IN A 192.0.2.7"},
			wantUp:     []string{"udp echo.nowhere. A"},
		},
		{
			name: "other names go upstream", qname: "example.com.", qtype: mdns.TypeA,
			wantAnswer: []string{"example.com. 300 IN A 93.184.216.34"},
			wantUp:     []string{"udp example.com. A"},
		},
		{
			name: "TXT upstream", qname: "example.com.", qtype: mdns.TypeTXT,
			wantAnswer: []string{`example.com. 300 IN TXT "v=spf1 -all"`},
			wantUp:     []string{"udp example.com. TXT"},
		},
		{
			name: "MX upstream", qname: "example.com.", qtype: mdns.TypeMX,
			wantAnswer: []string{"example.com. 300 IN MX 10 mail.example.com."},
			wantUp:     []string{"udp example.com. MX"},
		},
		{
			name: "cluster PTR", qname: "2.1.96.10.in-addr.arpa.", qtype: mdns.TypePTR,
			wantAnswer:  []string{"2.1.96.10.in-addr.arpa. 1 IN PTR echo.demo.svc.cluster.local."},
			wantCluster: []string{"2.1.96.10.in-addr.arpa. PTR"},
		},
		{
			name: "cluster PTR over IPv6", qname: "2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", qtype: mdns.TypePTR,
			wantAnswer:  []string{"2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 1 IN PTR echo.demo.svc.cluster.local."},
			wantCluster: []string{"2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. PTR"},
		},
		{
			name: "other PTR goes upstream", qname: "4.3.2.1.in-addr.arpa.", qtype: mdns.TypePTR,
			wantAnswer: []string{"4.3.2.1.in-addr.arpa. 300 IN PTR one.example.com."},
			wantUp:     []string{"udp 4.3.2.1.in-addr.arpa. PTR"},
		},
		{
			name: "CNAME chain keeps the target's name", qname: "ext.demo.", qtype: mdns.TypeA,
			wantAnswer:  []string{"ext.demo. 1 IN CNAME api.example.com."},
			wantCluster: []string{"ext.demo.svc.cluster.local. A"},
		},
		{
			name: "names are matched without regard to case", qname: "ECHO.Demo.", qtype: mdns.TypeA,
			wantAnswer:  []string{"ECHO.Demo. 1 IN A 10.96.1.2"},
			wantCluster: []string{"echo.demo.svc.cluster.local. A"},
		},
		{
			name: "namespace names are matched without regard to case", qname: "web.BILLING.", qtype: mdns.TypeA,
			wantCluster: []string{"web.billing.svc.cluster.local. A"},
			wantUp:      []string{"udp web.billing. A"},
			wantRcode:   mdns.RcodeNameError,
		},
		{
			name: "NXDOMAIN in the cluster domain stays there", qname: "nope.demo.svc.cluster.local.", qtype: mdns.TypeA,
			wantCluster: []string{"nope.demo.svc.cluster.local. A"},
			wantRcode:   mdns.RcodeNameError,
		},
		{
			name: "NODATA for an expanded name does not fall back", qname: "web.orders.", qtype: mdns.TypeAAAA,
			wantCluster: []string{"web.orders.svc.cluster.local. AAAA"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, cluster, up := newTestSetup(t)
			m := s.query(t, "udp", tt.qname, tt.qtype)
			if m.Rcode != tt.wantRcode {
				t.Errorf("rcode %s, want %s", mdns.RcodeToString[m.Rcode], mdns.RcodeToString[tt.wantRcode])
			}
			if got := m.Question[0].Name; got != tt.qname {
				t.Errorf("question %q, want the client's %q", got, tt.qname)
			}
			if got := rrStrings(m.Answer); !slices.Equal(got, tt.wantAnswer) {
				t.Errorf("answer\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.wantAnswer, "\n"))
			}
			if got := cluster.queries(); !slices.Equal(got, tt.wantCluster) {
				t.Errorf("cluster asked %q, want %q", got, tt.wantCluster)
			}
			if got := up.queries(); !slices.Equal(got, tt.wantUp) {
				t.Errorf("upstream asked %q, want %q", got, tt.wantUp)
			}
		})
	}
}

func TestSingleLabelWithoutNamespaceGoesUpstream(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	up := startUpstream(t, upstreamRecords...)
	s := serveResolver(t, cluster, Config{Upstreams: []netip.AddrPort{up.addr}})
	m := s.query(t, "udp", "nothere.", mdns.TypeA)
	if got := rrStrings(m.Answer); len(got) != 1 || got[0] != "nothere. 120 IN A 192.0.2.99" {
		t.Errorf("answer %q", got)
	}
	if got := cluster.queries(); len(got) != 0 {
		t.Errorf("cluster asked %q; without a namespace a single label is not a cluster name", got)
	}
}

func TestKeepsMessageIDAndQuestion(t *testing.T) {
	s, _, _ := newTestSetup(t)
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"echo.demo.", "example.com.", "missing.demo.svc.cluster.local."} {
			q := new(mdns.Msg)
			q.SetQuestion(name, mdns.TypeA)
			q.Id = 4242
			m, _, err := (&mdns.Client{Net: network}).Exchange(q, s.addr)
			if err != nil {
				t.Fatal(err)
			}
			if m.Id != 4242 || !m.Response || !m.RecursionAvailable || m.Question[0] != q.Question[0] {
				t.Errorf("%s %s: header %+v question %v", network, name, m.MsgHdr, m.Question)
			}
		}
	}
}

func TestTCPQueryGoesUpstreamOverTCP(t *testing.T) {
	s, _, up := newTestSetup(t)
	m := s.query(t, "tcp", "example.com.", mdns.TypeA)
	if len(m.Answer) != 1 {
		t.Fatalf("answer %v", m.Answer)
	}
	if got := up.queries(); !slices.Equal(got, []string{"tcp example.com. A"}) {
		t.Errorf("upstream asked %q, want one TCP query", got)
	}
}

func TestUpstreamTCPRetryOnTruncation(t *testing.T) {
	s, _, up := newTestSetup(t)
	up.set(true, 0)
	m := s.query(t, "udp", "example.com.", mdns.TypeA)
	if got := rrStrings(m.Answer); len(got) != 1 || got[0] != "example.com. 300 IN A 93.184.216.34" || m.Truncated {
		t.Errorf("answer %q truncated=%v", got, m.Truncated)
	}
	if got := up.queries(); !slices.Equal(got, []string{"udp example.com. A", "tcp example.com. A"}) {
		t.Errorf("upstream asked %q, want UDP then TCP", got)
	}
}

func TestUpstreamFailover(t *testing.T) {
	up := startUpstream(t, upstreamRecords...)
	broken := startUpstream(t)
	broken.set(false, mdns.RcodeServerFailure)
	s := serveResolver(t, nil, Config{Upstreams: []netip.AddrPort{deadUpstream(t), broken.addr, up.addr}})
	m := s.query(t, "udp", "example.com.", mdns.TypeA)
	if m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("answer %v", m)
	}
	if len(broken.queries()) != 1 || len(up.queries()) != 1 {
		t.Errorf("broken asked %q, good asked %q", broken.queries(), up.queries())
	}
}

func TestAllUpstreamsFailServfail(t *testing.T) {
	broken := startUpstream(t)
	broken.set(false, mdns.RcodeRefused)
	for _, ups := range [][]netip.AddrPort{nil, {deadUpstream(t)}, {broken.addr}} {
		s := serveResolver(t, nil, Config{Upstreams: ups})
		m := s.query(t, "udp", "example.com.", mdns.TypeA)
		if m.Rcode != mdns.RcodeServerFailure && m.Rcode != mdns.RcodeRefused {
			t.Errorf("upstreams %v: rcode %s", ups, mdns.RcodeToString[m.Rcode])
		}
	}
}

func TestClusterFailureServfail(t *testing.T) {
	s, cluster, up := newTestSetup(t)
	cluster.setErr(errBoom)
	for _, name := range []string{"echo.demo.svc.cluster.local.", "echo.demo.", "echo."} {
		m := s.query(t, "udp", name, mdns.TypeA)
		if m.Rcode != mdns.RcodeServerFailure {
			t.Errorf("%s: rcode %s, want SERVFAIL", name, mdns.RcodeToString[m.Rcode])
		}
	}
	if got := up.queries(); len(got) != 0 {
		t.Errorf("cluster names leaked upstream: %q", got)
	}
	if st := s.Stats(); st.Failures != 3 {
		t.Errorf("stats %+v, want 3 failures", st)
	}
	// SERVFAIL is not cached: once the cluster is back, it answers.
	cluster.setErr(nil)
	if m := s.query(t, "udp", "echo.demo.", mdns.TypeA); m.Rcode != mdns.RcodeSuccess {
		t.Errorf("after recovery: rcode %s", mdns.RcodeToString[m.Rcode])
	}
}

func TestNilClusterServfail(t *testing.T) {
	s := serveResolver(t, nil, Config{})
	if m := s.query(t, "udp", "echo.default.svc.cluster.local.", mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
		t.Errorf("rcode %s", mdns.RcodeToString[m.Rcode])
	}
}

// A confused or spoofing cluster answer for another name must not reach the client.
func TestAnswerForAnotherQuestionIsRejected(t *testing.T) {
	s := serveResolver(t, exchangerFunc(func(q *mdns.Msg) *mdns.Msg {
		m := new(mdns.Msg)
		m.SetQuestion("evil.example.", mdns.TypeA)
		m.Response = true
		m.Answer = newZone(t, "evil.example. 30 IN A 6.6.6.6")["evil.example."]
		return m
	}), Config{Namespace: "demo"})
	if m := s.query(t, "udp", "echo.demo.svc.cluster.local.", mdns.TypeA); m.Rcode != mdns.RcodeServerFailure || len(m.Answer) != 0 {
		t.Errorf("got %v", m)
	}
}

func TestLargeAnswerTruncatedForUDPClient(t *testing.T) {
	var records []string
	for i := range 60 {
		records = append(records, "big.demo.svc.cluster.local. 30 IN A 10.96.2."+itoa(i))
	}
	s := serveResolver(t, newFakeCluster(t, records...), Config{Namespace: "demo"})
	s.SetNamespaces([]string{"demo"})
	udp := s.query(t, "udp", "big.demo.", mdns.TypeA) // no EDNS0: 512 bytes
	if !udp.Truncated || len(udp.Answer) >= 60 {
		t.Errorf("UDP: truncated=%v with %d records", udp.Truncated, len(udp.Answer))
	}
	tcp := s.query(t, "tcp", "big.demo.", mdns.TypeA)
	if tcp.Truncated || len(tcp.Answer) != 60 || tcp.Answer[0].Header().Name != "big.demo." {
		t.Errorf("TCP: truncated=%v with %d records", tcp.Truncated, len(tcp.Answer))
	}
}

func TestEDNS0IsHopByHop(t *testing.T) {
	s, _, _ := newTestSetup(t)
	q := new(mdns.Msg)
	q.SetQuestion("echo.demo.", mdns.TypeA)
	q.SetEdns0(4096, true)
	m, _, err := (&mdns.Client{}).Exchange(q, s.addr)
	if err != nil {
		t.Fatal(err)
	}
	opt := m.IsEdns0()
	if opt == nil || opt.UDPSize() != ednsSize || !opt.Do() {
		t.Errorf("OPT %v", opt)
	}
	if n := len(m.Extra); n != 1 {
		t.Errorf("extra has %d records, want only our OPT", n)
	}
	plain := s.query(t, "udp", "example.com.", mdns.TypeA)
	if plain.IsEdns0() != nil {
		t.Error("answer to a query without EDNS0 carries an OPT record")
	}
}

func TestStats(t *testing.T) {
	s, _, _ := newTestSetup(t)
	s.query(t, "udp", "echo.demo.", mdns.TypeA)
	s.query(t, "udp", "echo.demo.", mdns.TypeA)
	s.query(t, "udp", "example.com.", mdns.TypeA)
	got := s.Stats()
	// The readiness probes count as queries too.
	want := ResolverStats{Queries: got.Queries, ClusterQueries: 1, UpstreamQueries: 1, CacheHits: 1}
	if got != want || got.Queries < 3 {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

type exchangerFunc func(q *mdns.Msg) *mdns.Msg

func (f exchangerFunc) Exchange(_ context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	return f(q), nil
}

func itoa(i int) string { return strconv.Itoa(i) }

// Observe hears each query that left the resolver, not the cache's answers.
func TestObserveTimesQueriesThatLeave(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	up := startUpstream(t, upstreamRecords...)
	var mu sync.Mutex
	var seen []string
	s := serveResolver(t, cluster, Config{
		ClusterDomain: "cluster.local", Namespace: "demo", Upstreams: []netip.AddrPort{up.addr},
		Observe: func(via string, took time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			if took <= 0 || err != nil {
				t.Errorf("observed %s took %s err %v", via, took, err)
			}
			seen = append(seen, via)
		},
	})
	s.query(t, "udp", "echo.demo.svc.cluster.local.", mdns.TypeA)
	s.query(t, "udp", "echo.demo.svc.cluster.local.", mdns.TypeA) // cached
	s.query(t, "udp", "example.com.", mdns.TypeA)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, []string{"cluster", "upstream"}) {
		t.Fatalf("observed %v, want one cluster and one upstream query", seen)
	}
}

// TestClientDecidesWhoIsAnswered: with Config.Client set, a query from a
// source it turns away is REFUSED, over UDP and TCP, before the cluster or
// an upstream hears of it; one it accepts is answered.
func TestClientDecidesWhoIsAnswered(t *testing.T) {
	cluster := newFakeCluster(t, clusterRecords...)
	up := startUpstream(t, "example.com. 60 IN A 192.0.2.1")
	neighbour := netip.MustParseAddr("192.168.1.20")
	r := NewResolver(nil, cluster, Config{Namespace: "demo", Upstreams: []netip.AddrPort{up.addr},
		Client: func(a netip.Addr) bool { return a != neighbour }})
	t.Cleanup(func() { r.Close() })
	for _, tcp := range []bool{false, true} {
		for _, name := range []string{"echo.demo.svc.cluster.local.", "example.com."} {
			q := new(mdns.Msg)
			q.SetQuestion(name, mdns.TypeA)
			w := &fakeWriter{tcp: tcp, from: neighbour}
			r.ServeDNS(w, q)
			if w.msg == nil || w.msg.Rcode != mdns.RcodeRefused || len(w.msg.Answer) != 0 {
				t.Fatalf("tcp=%v %s from %s: got %v, want REFUSED and no answer", tcp, name, neighbour, w.msg)
			}
		}
	}
	if got := cluster.queries(); len(got) != 0 {
		t.Errorf("the cluster was asked %v for a refused source", got)
	}
	if got := up.queries(); len(got) != 0 {
		t.Errorf("the upstream was asked %v for a refused source", got)
	}
	if got := r.Stats().Refused; got != 4 {
		t.Errorf("Refused = %d, want 4", got)
	}
	if m := ask(t, r, "echo.demo.svc.cluster.local.", mdns.TypeA); m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("from 127.0.0.1: got %v, want the cluster's answer", m)
	}
}
