package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// fakeManager records the intercepts the daemon registers.
type fakeManager struct {
	managerpb.ManagerClient
	created []*managerpb.InterceptSpec
	refuse  bool
}

func (f *fakeManager) CreateIntercept(_ context.Context, spec *managerpb.InterceptSpec, _ ...grpc.CallOption) (*managerpb.Intercept, error) {
	if f.refuse {
		return nil, status.Error(codes.AlreadyExists, "taken")
	}
	f.created = append(f.created, spec)
	key := make([]byte, rpc.DirectKeyLen)
	key[0] = byte(len(f.created))
	return &managerpb.Intercept{Spec: spec, Id: uint64(len(f.created)), User: "dev", DirectKey: key}, nil
}

func (f *fakeManager) RemoveIntercept(context.Context, *managerpb.RemoveInterceptRequest, ...grpc.CallOption) (*managerpb.RemoveInterceptResponse, error) {
	return &managerpb.RemoveInterceptResponse{}, nil
}

// muxPair is a yamux session pair over an in-memory pipe: the manager's
// end opens streams, the daemon's accepts them.
func muxPair(t *testing.T) (manager, laptop *yamux.Session) {
	t.Helper()
	a, b := net.Pipe()
	var err error
	if manager, err = yamux.Server(a, nil); err != nil {
		t.Fatal(err)
	}
	if laptop, err = yamux.Client(b, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { manager.Close(); laptop.Close() })
	return manager, laptop
}

// openIntercepted plays the manager: a stream for laptop intercept id, with the
// client's first bytes sent before the answer, as the manager does.
func openIntercepted(t *testing.T, x *intercepts, mgr, lap *yamux.Session, id uint64, first string) (net.Conn, error) {
	t.Helper()
	st, err := mgr.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("10.244.0.7:40000")
	if err := rpc.WriteHeader(st, rpc.Header{Kind: rpc.KindIntercept, Dst: client, Flow: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte(first)); err != nil {
		t.Fatal(err)
	}
	go func() {
		in, err := lap.AcceptStream()
		if err != nil {
			return
		}
		h, err := rpc.ReadHeader(in)
		if err != nil {
			in.Close()
			return
		}
		x.serve(context.Background(), in, h)
	}()
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	return st, rpc.ReadStatus(st)
}

func TestInterceptStreamsReachTheLocalProcess(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server stands for the developer's process
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	port := uint32(ln.Addr().(*net.TCPAddr).Port)

	x := newIntercepts(slog.New(slog.DiscardHandler))
	mgr := &fakeManager{}
	spec := &managerpb.InterceptSpec{Name: "echo-http", Namespace: "dev", Workload: "echo", Port: 8080, Mode: managerpb.InterceptMode_GLOBAL}
	ic, err := x.add(context.Background(), mgr, spec, port)
	if err != nil || ic.GetSpec().GetLaptopId() == 0 {
		t.Fatalf("add: %v %v", ic, err)
	}
	m, l := muxPair(t)

	st, err := openIntercepted(t, x, m, l, ic.GetSpec().GetLaptopId(), "hello")
	if err != nil {
		t.Fatalf("a registered intercept: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("the bytes sent before the answer came back as %q (%v)", buf, err)
	}
	st.Close()

	if _, err := openIntercepted(t, x, m, l, 999, ""); err != rpc.StatusUnreachable {
		t.Errorf("an unknown intercept: %v, want %v", err, rpc.StatusUnreachable)
	}
	ln.Close()
	if _, err := openIntercepted(t, x, m, l, ic.GetSpec().GetLaptopId(), ""); err != rpc.StatusRefused {
		t.Errorf("nothing listening: %v, want %v", err, rpc.StatusRefused)
	}
}

func TestReregisterKeepsWhatTheManagerTakes(t *testing.T) {
	x := newIntercepts(slog.New(slog.DiscardHandler))
	first := &fakeManager{}
	for _, name := range []string{"a", "b"} {
		spec := &managerpb.InterceptSpec{Name: name, Namespace: "dev", Workload: "echo", Port: 8080, Mode: managerpb.InterceptMode_MIRROR}
		if _, err := x.add(context.Background(), first, spec, 7070); err != nil {
			t.Fatal(err)
		}
	}
	// Re-adding a name replaces it, under a new laptop id.
	spec := &managerpb.InterceptSpec{Name: "a", Namespace: "dev", Workload: "echo", Port: 8080, Mode: managerpb.InterceptMode_MIRROR}
	if _, err := x.add(context.Background(), first, spec, 7071); err != nil {
		t.Fatal(err)
	}
	if n := len(x.list()); n != 2 {
		t.Fatalf("%d intercepts after replacing one, want 2", n)
	}

	again := &fakeManager{}
	x.reregister(context.Background(), again)
	if len(again.created) != 2 {
		t.Errorf("a new session got %d intercepts, want 2", len(again.created))
	}
	x.reregister(context.Background(), &fakeManager{refuse: true})
	if n := len(x.list()); n != 0 {
		t.Errorf("%d intercepts kept after the manager refused them, want 0", n)
	}
}
