package manager

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// query packs a query for name and type t, with EDNS0 when edns > 0.
func query(t testing.TB, name string, qtype uint16, edns uint16) []byte {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if edns > 0 {
		q.SetEdns0(edns, false)
	}
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unpack(t testing.TB, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack answer: %v", err)
	}
	return m
}

// testForwarder forwards to the given "ip:port" servers.
func testForwarder(t testing.TB, timeout time.Duration, servers ...string) *forwarder {
	t.Helper()
	f := &forwarder{timeout: timeout}
	for _, s := range servers {
		f.servers = append(f.servers, netip.MustParseAddrPort(s))
	}
	return f
}

func TestResolveOverGRPC(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ctl := controlClient(t, laptop(t, serve(t, m)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	q := query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0)
	resp, err := ctl.Resolve(ctx, &managerpb.ResolveRequest{Query: q})
	if err != nil {
		t.Fatal(err)
	}
	ans := unpack(t, resp.GetAnswer())
	if ans.Id != unpack(t, q).Id || len(ans.Answer) != 1 {
		t.Fatalf("answer %v does not answer the query", ans)
	}
	a, ok := ans.Answer[0].(*dns.A)
	if !ok || a.A.String() != "10.96.0.42" || a.Hdr.Ttl != 42 {
		t.Errorf("answer record %v, want A 10.96.0.42 with TTL 42", ans.Answer[0])
	}

	nx, err := ctl.Resolve(ctx, &managerpb.ResolveRequest{Query: query(t, "nope.test.", dns.TypeAAAA, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if rc := unpack(t, nx.GetAnswer()).Rcode; rc != dns.RcodeNameError {
		t.Errorf("rcode %s, want NXDOMAIN passed through", dns.RcodeToString[rc])
	}
}

func TestResolveRejectsMalformedQueries(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ctl := controlClient(t, laptop(t, serve(t, m)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp := new(dns.Msg)
	resp.SetQuestion("x.test.", dns.TypeA)
	resp.Response = true
	respBytes, _ := resp.Pack()
	for name, q := range map[string][]byte{
		"empty":      nil,
		"garbage":    []byte("definitely not DNS"),
		"short":      query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0)[:15],
		"a response": respBytes,
	} {
		_, err := ctl.Resolve(ctx, &managerpb.ResolveRequest{Query: q})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestForwardRetriesTruncatedOverTCP(t *testing.T) {
	f := testForwarder(t, time.Second, startDNS(t, testDNSHandler))
	ans, err := f.forward(context.Background(), query(t, "big.test.", dns.TypeA, 0))
	if err != nil {
		t.Fatal(err)
	}
	if m := unpack(t, ans); m.Truncated || len(m.Answer) != 100 {
		t.Errorf("truncated=%v with %d records, want the full TCP answer of 100", m.Truncated, len(m.Answer))
	}
}

func TestForwardKeepsLargeUDPAnswers(t *testing.T) {
	// With EDNS0 a 4 KB answer fits UDP: it must arrive whole, not cut at 512 bytes.
	srv := startDNS(t, func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		for i := range 150 {
			rr, _ := dns.NewRR("wide.test. 60 IN TXT \"" + string(rune('a'+i%26)) + "\"")
			r.Answer = append(r.Answer, rr)
		}
		_ = w.WriteMsg(r)
	})
	f := testForwarder(t, time.Second, srv)
	ans, err := f.forward(context.Background(), query(t, "wide.test.", dns.TypeTXT, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if len(ans) <= 512 || len(unpack(t, ans).Answer) != 150 {
		t.Errorf("answer of %d bytes with %d records, want all 150", len(ans), len(unpack(t, ans).Answer))
	}
}

func TestForwardNextServerWhenOneIsDown(t *testing.T) {
	down := closedUDPPort(t)
	f := testForwarder(t, time.Second, down, startDNS(t, testDNSHandler))
	ans, err := f.forward(context.Background(), query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(unpack(t, ans).Answer) != 1 {
		t.Error("no answer from the second server")
	}
}

func TestForwardNextServerWhenOneIsSilent(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	f := testForwarder(t, 200*time.Millisecond, silent.LocalAddr().String(), startDNS(t, testDNSHandler))
	start := time.Now()
	ans, err := f.forward(context.Background(), query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(unpack(t, ans).Answer) != 1 {
		t.Error("no answer from the second server")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s: the silent server was not given up on", d)
	}
}

func TestForwardServfailTriesNextServer(t *testing.T) {
	var failing atomic.Int32
	servfail := startDNS(t, func(w dns.ResponseWriter, q *dns.Msg) {
		failing.Add(1)
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeServerFailure)
		_ = w.WriteMsg(r)
	})
	good := startDNS(t, testDNSHandler)
	q := query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0)

	ans, err := testForwarder(t, time.Second, servfail, good).forward(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if m := unpack(t, ans); m.Rcode != dns.RcodeSuccess || failing.Load() != 1 {
		t.Errorf("rcode %s after %d SERVFAILs, want the second server's answer", dns.RcodeToString[m.Rcode], failing.Load())
	}

	// When every server fails that way, the laptop gets the SERVFAIL itself.
	ans, err = testForwarder(t, time.Second, servfail, servfail).forward(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if m := unpack(t, ans); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
}

func TestForwardSkipsSpoofedAnswers(t *testing.T) {
	// A server that first sends an answer with the wrong ID, then the right one.
	srv := startDNS(t, func(w dns.ResponseWriter, q *dns.Msg) {
		bad := new(dns.Msg)
		bad.SetRcode(q, dns.RcodeNameError)
		bad.Id = q.Id + 1
		_ = w.WriteMsg(bad)
		testDNSHandler(w, q)
	})
	ans, err := testForwarder(t, time.Second, srv).forward(context.Background(), query(t, "orders.shop.svc.cluster.test.", dns.TypeA, 0))
	if err != nil {
		t.Fatal(err)
	}
	if m := unpack(t, ans); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("got %v, want the answer with the query's ID", m)
	}
}

func TestForwardFailsWhenNoServerAnswers(t *testing.T) {
	f := testForwarder(t, 200*time.Millisecond, closedUDPPort(t))
	_, err := f.forward(context.Background(), query(t, "x.test.", dns.TypeA, 0))
	if status.Code(grpcError(err)) != codes.Unavailable {
		t.Errorf("%v, want Unavailable", err)
	}
}

func TestForwardHonoursCancel(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = testForwarder(t, time.Minute, silent.LocalAddr().String()).forward(ctx, query(t, "x.test.", dns.TypeA, 0))
	if status.Code(grpcError(err)) != codes.DeadlineExceeded {
		t.Errorf("%v, want DeadlineExceeded", err)
	}
}

// closedUDPPort returns a 127.0.0.1 UDP port nobody listens on.
func closedUDPPort(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}
