package dns

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// zone is a tiny authoritative server's data: records by owner name.
type zone map[string][]mdns.RR

// newZone parses records in zone-file syntax.
func newZone(t testing.TB, records ...string) zone {
	t.Helper()
	z := zone{}
	for _, s := range records {
		rr, err := mdns.NewRR(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		name := strings.ToLower(rr.Header().Name)
		z[name] = append(z[name], rr)
	}
	return z
}

// answer answers q from z: records of the type asked (following nothing),
// CNAMEs for any type, NODATA or NXDOMAIN with an SOA otherwise.
func (z zone) answer(q *mdns.Msg, soaTTL uint32) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	qq := q.Question[0]
	rrs, ok := z[strings.ToLower(qq.Name)]
	for _, rr := range rrs {
		if t := rr.Header().Rrtype; t == qq.Qtype || t == mdns.TypeCNAME || qq.Qtype == mdns.TypeANY {
			m.Answer = append(m.Answer, mdns.Copy(rr))
		}
	}
	// Follow CNAMEs inside the zone, as CoreDNS does for ExternalName services.
	for i := 0; i < len(m.Answer); i++ {
		if c, isC := m.Answer[i].(*mdns.CNAME); isC && qq.Qtype != mdns.TypeCNAME {
			for _, rr := range z[strings.ToLower(c.Target)] {
				if rr.Header().Rrtype == qq.Qtype {
					m.Answer = append(m.Answer, mdns.Copy(rr))
				}
			}
		}
	}
	if len(m.Answer) == 0 {
		if !ok {
			m.Rcode = mdns.RcodeNameError
		}
		m.Ns = []mdns.RR{&mdns.SOA{
			Hdr: mdns.RR_Header{Name: "zone.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: soaTTL},
			Ns:  "ns.zone.", Mbox: "hostmaster.zone.", Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: soaTTL,
		}}
	}
	return m
}

// fakeCluster is the cluster's DNS as the manager would relay it.
type fakeCluster struct {
	zone   zone
	soaTTL uint32

	mu    sync.Mutex // guards following
	asked []string   // "<name> <type>" for each query
	err   error      // when set, every Exchange fails with it
	rcode int        // when set, every Exchange answers with it and nothing else
}

func newFakeCluster(t testing.TB, records ...string) *fakeCluster {
	return &fakeCluster{zone: newZone(t, records...), soaTTL: 30}
}

func (c *fakeCluster) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, q.Question[0].Name+" "+mdns.Type(q.Question[0].Qtype).String())
	if c.err != nil {
		return nil, c.err
	}
	if c.rcode != 0 {
		m := new(mdns.Msg)
		m.SetRcode(q, c.rcode)
		return m, nil
	}
	return c.zone.answer(q, c.soaTTL), nil
}

func (c *fakeCluster) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

func (c *fakeCluster) queries() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.asked...)
}

// fakeUpstream is a real miekg server on 127.0.0.1:0, UDP and TCP on one port.
type fakeUpstream struct {
	addr netip.AddrPort
	zone zone

	mu          sync.Mutex // guards following
	asked       []string   // "<net> <name> <type>" for each query
	truncateUDP bool       // answer UDP with TC and no records
	rcode       int        // when not 0, answer every query with it
}

func startUpstream(t testing.TB, records ...string) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{zone: newZone(t, records...)}
	pc, ln := listenPair(t)
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	h := mdns.HandlerFunc(u.serveDNS)
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		done := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { defer close(done); s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { s.Shutdown(); <-done })
	}
	return u
}

func (u *fakeUpstream) serveDNS(w mdns.ResponseWriter, q *mdns.Msg) {
	network := w.RemoteAddr().Network()
	u.mu.Lock()
	u.asked = append(u.asked, network+" "+q.Question[0].Name+" "+mdns.Type(q.Question[0].Qtype).String())
	trunc, rcode := u.truncateUDP && network == "udp", u.rcode
	u.mu.Unlock()
	m := u.zone.answer(q, 60)
	switch {
	case rcode != 0:
		m = new(mdns.Msg).SetRcode(q, rcode)
	case trunc:
		m.Truncated, m.Answer = true, nil
	}
	w.WriteMsg(m)
}

func (u *fakeUpstream) set(truncateUDP bool, rcode int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.truncateUDP, u.rcode = truncateUDP, rcode
}

func (u *fakeUpstream) queries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.asked...)
}

// listenPair listens for UDP and TCP on one loopback port, as a DNS server
// does; the servers close them.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close() // the TCP port was taken; try another
	}
	t.Fatal("no free loopback port for UDP and TCP")
	return nil, nil
}

// deadUpstream is a loopback address where nothing listens.
func deadUpstream(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return a
}

// served is a resolver served on loopback conns, as the daemon serves it on
// conns from its userspace stack.
type served struct {
	*Resolver
	addr string
}

func serveResolver(t testing.TB, cluster Exchanger, cfg Config) *served {
	t.Helper()
	r := NewResolver(testLogger(t), cluster, cfg)
	pc, ln := listenPair(t)
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background(), pc, ln) }()
	t.Cleanup(func() {
		r.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	s := &served{Resolver: r, addr: pc.LocalAddr().String()}
	s.waitReady(t)
	return s
}

// waitReady waits until the servers answer, over UDP and TCP.
func (s *served) waitReady(t testing.TB) {
	t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			c := &mdns.Client{Net: network, Timeout: 200 * time.Millisecond}
			q := new(mdns.Msg)
			q.Opcode = mdns.OpcodeStatus // answered NOTIMP without touching anything
			q.Id = mdns.Id()
			if _, _, err := c.Exchange(q, s.addr); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("resolver not answering over %s", network)
			}
		}
	}
}

// query asks the served resolver over network ("udp" or "tcp").
func (s *served) query(t testing.TB, network, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
	m, _, err := c.Exchange(q, s.addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, mdns.Type(qtype), network, err)
	}
	if m.Id != q.Id {
		t.Fatalf("answer ID %d, query ID %d", m.Id, q.Id)
	}
	return m
}

// rrStrings renders records with TTLs, sorted as given.
func rrStrings(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return out
}

// fakeWriter is an mdns.ResponseWriter that keeps what was written.
type fakeWriter struct {
	tcp  bool
	from netip.Addr // the query's source; 127.0.0.1 when not set
	msg  *mdns.Msg
}

func (w *fakeWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(198, 18, 0, 53), Port: 53}
}

func (w *fakeWriter) RemoteAddr() net.Addr {
	from := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if w.from.IsValid() {
		from = w.from
	}
	if w.tcp {
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 5353))
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 5353))
}

func (w *fakeWriter) WriteMsg(m *mdns.Msg) error {
	if _, err := m.Pack(); err != nil {
		return err
	}
	w.msg = m
	return nil
}

func (w *fakeWriter) Write(b []byte) (int, error) {
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	w.msg = m
	return len(b), nil
}

func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimSuffix(b, []byte("\n"))))
	return len(b), nil
}

var errBoom = errors.New("boom")
