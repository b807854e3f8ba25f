package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestMalformedPacketsDoNotStopTheServer(t *testing.T) {
	s, _, _ := newTestSetup(t)
	good := new(mdns.Msg)
	good.SetQuestion("echo.demo.", mdns.TypeA)
	packed, _ := good.Pack()
	garbage := [][]byte{
		{},
		{0x00},
		[]byte("hello, resolver"),
		make([]byte, 12),        // a header with no question
		packed[:len(packed)-3],  // cut short inside the question
		append(packed, 0xff, 1), // trailing bytes
		make([]byte, 65000),     // a big zero packet
		{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, // a response with a pointer loop
	}
	udp, err := net.Dial("udp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, g := range garbage {
		udp.Write(g)
	}
	tcp, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range garbage[:6] {
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(g)))
		tcp.Write(append(l[:], g...))
	}
	tcp.Write([]byte{0xff, 0xff, 1, 2, 3}) // a length the stream never delivers
	tcp.Close()

	for _, network := range []string{"udp", "tcp"} {
		m := s.query(t, network, "echo.demo.", mdns.TypeA)
		if len(m.Answer) != 1 {
			t.Errorf("%s after garbage: %v", network, m)
		}
	}
}

func TestHandlerRejectsOddQueries(t *testing.T) {
	r := NewResolver(testLogger(t), newFakeCluster(t, clusterRecords...), Config{Namespace: "demo"})
	t.Cleanup(func() { r.Close() })
	q := func(edit func(*mdns.Msg)) *mdns.Msg {
		m := new(mdns.Msg)
		m.SetQuestion("echo.", mdns.TypeA)
		m.Id = 777
		edit(m)
		return m
	}
	tests := []struct {
		name      string
		q         *mdns.Msg
		wantRcode int // -1: no answer at all
	}{
		{"no question", q(func(m *mdns.Msg) { m.Question = nil }), mdns.RcodeFormatError},
		{"two questions", q(func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) }), mdns.RcodeFormatError},
		{"NOTIFY", q(func(m *mdns.Msg) { m.Opcode = mdns.OpcodeNotify }), mdns.RcodeNotImplemented},
		{"UPDATE", q(func(m *mdns.Msg) { m.Opcode = mdns.OpcodeUpdate }), mdns.RcodeNotImplemented},
		{"a response", q(func(m *mdns.Msg) { m.Response = true }), -1},
		{"CHAOS class goes upstream, which there is none of", q(func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }), mdns.RcodeServerFailure},
	}
	for _, tt := range tests {
		w := &fakeWriter{}
		r.ServeDNS(w, tt.q)
		switch {
		case tt.wantRcode == -1:
			if w.msg != nil {
				t.Errorf("%s: answered %v", tt.name, w.msg)
			}
		case w.msg == nil:
			t.Errorf("%s: no answer", tt.name)
		case w.msg.Rcode != tt.wantRcode || w.msg.Id != 777 || len(w.msg.Question) > 1:
			t.Errorf("%s: got rcode %s id %d questions %d", tt.name, mdns.RcodeToString[w.msg.Rcode], w.msg.Id, len(w.msg.Question))
		}
	}
	r.ServeDNS(&fakeWriter{}, nil) // must not panic
}

func TestHandlerSurvivesAPanickingExchanger(t *testing.T) {
	panicky := exchangerFunc(func(q *mdns.Msg) *mdns.Msg {
		m := new(mdns.Msg).SetReply(q)
		m.Answer = []mdns.RR{nil} // a bug in the Exchanger
		return m
	})
	s := serveResolver(t, panicky, Config{})
	for range 2 {
		if m := s.query(t, "udp", "x.default.svc.cluster.local.", mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
			t.Errorf("rcode %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
		}
	}
	if n := s.panics.Load(); n != 2 {
		t.Errorf("%d panics recovered, want 2", n)
	}
}

func TestServeStopsOnContext(t *testing.T) {
	r := NewResolver(testLogger(t), nil, Config{})
	defer r.Close()
	pc, ln := loopbackConns(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, pc, ln) }()
	(&served{Resolver: r, addr: pc.LocalAddr().String()}).waitReady(t)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still open after Serve returned")
	}
}

func TestCloseStopsServeAndQueriesInFlight(t *testing.T) {
	entered := make(chan struct{})
	blocking := exchangerFunc2(func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	r := NewResolver(testLogger(t), blocking, Config{})
	pc, ln := loopbackConns(t)
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background(), pc, ln) }()
	(&served{Resolver: r, addr: pc.LocalAddr().String()}).waitReady(t)

	go (&mdns.Client{Timeout: 10 * time.Second}).Exchange(new(mdns.Msg).SetQuestion("x.default.svc.cluster.local.", mdns.TypeA), pc.LocalAddr().String())
	<-entered
	start := time.Now()
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v; the query in flight should have been cancelled", d)
	}
	if err := r.Serve(context.Background(), pc, ln); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close: %v, want ErrClosed", err)
	}
}

func TestServeUDPOnly(t *testing.T) {
	r := NewResolver(testLogger(t), newFakeCluster(t, clusterRecords...), Config{Namespace: "demo"})
	pc, ln := loopbackConns(t)
	ln.Close()
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background(), pc, nil) }()
	m, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(new(mdns.Msg).SetQuestion("echo.", mdns.TypeA), pc.LocalAddr().String())
	if err != nil || len(m.Answer) != 1 {
		t.Errorf("answer %v, %v", m, err)
	}
	r.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestServeNeedsAConn(t *testing.T) {
	r := NewResolver(nil, nil, Config{})
	defer r.Close()
	if err := r.Serve(context.Background(), nil, nil); err == nil {
		t.Error("Serve with no conns succeeded")
	}
}

func TestServeReportsAFailedListener(t *testing.T) {
	r := NewResolver(testLogger(t), nil, Config{})
	defer r.Close()
	pc, ln := loopbackConns(t)
	done := make(chan error, 1)
	failing := &failingListener{Listener: ln, fail: make(chan struct{})}
	go func() { done <- r.Serve(context.Background(), pc, failing) }()
	(&served{Resolver: r, addr: pc.LocalAddr().String()}).waitReady(t)
	close(failing.fail)
	net.Dial("tcp", ln.Addr().String()) // wake Accept
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve returned nil after its listener failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its listener failed")
	}
}

// failingListener fails Accept for good once fail is closed.
type failingListener struct {
	net.Listener
	fail chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	select {
	case <-l.fail:
		if c != nil {
			c.Close()
		}
		return nil, errors.New("stack gone")
	default:
		return c, err
	}
}

func loopbackConns(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	pc, ln := listenPair(t)
	t.Cleanup(func() { pc.Close(); ln.Close() })
	return pc, ln
}

type exchangerFunc2 func(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error)

func (f exchangerFunc2) Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error) {
	return f(ctx, q)
}
