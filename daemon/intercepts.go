package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// intercepts are this laptop's intercepts. The manager opens a stream for
// each connection one of them takes; the daemon answers it by dialing the
// local process. They are registered again whenever the session is.
type intercepts struct {
	log *slog.Logger
	// dial reaches a local port; tests replace it.
	dial func(ctx context.Context, port uint32) (net.Conn, error)

	buffers relay.Buffers // copy buffers between streams and local processes

	mu     sync.Mutex // guards following
	next   uint64
	byID   map[uint64]*localIntercept
	direct *direct         // spares straight to the sidecars; nil: none
	base   context.Context // the session's life, which the spares share
}

type localIntercept struct {
	spec *managerpb.InterceptSpec // LaptopId set
	port uint32                   // the local process's port
	pb   *managerpb.Intercept     // as the manager last confirmed it
	stop func()                   // ends its direct path
}

// useDirect opens spares to the sidecars for every intercept from now on,
// until ctx ends.
func (x *intercepts) useDirect(ctx context.Context, d *direct) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.base, x.direct = ctx, d
}

// startLocked starts li's direct path, ending the one it had.
func (x *intercepts) startLocked(li *localIntercept) {
	x.stopLocked(li)
	if x.direct == nil || x.base == nil || len(li.pb.GetDirectKey()) == 0 || li.pb.GetSpec().GetPort() == 0 { // port 0: a suspended Job, no pods to reach
		return
	}
	ctx, cancel := context.WithCancel(x.base)
	done := make(chan struct{})
	go func() {
		defer close(done)
		x.direct.run(ctx, li.pb)
	}()
	li.stop = func() { cancel(); <-done }
}

func (x *intercepts) stopLocked(li *localIntercept) {
	if li.stop != nil {
		stop := li.stop
		li.stop = nil
		go stop() // its relays end by themselves; nothing waits on them here
	}
}

func newIntercepts(log *slog.Logger) *intercepts {
	return &intercepts{log: log.With("subsystem", "intercepts"), dial: dialLocal, byID: map[uint64]*localIntercept{},
		buffers: relay.Buffers{Size: 256 << 10}}
}

// dialLocal reaches a process on this machine: IPv4 loopback first, then
// IPv6 for servers that listen on ::1 only.
func dialLocal(ctx context.Context, port uint32) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		if c6, err6 := d.DialContext(ctx, "tcp", fmt.Sprintf("[::1]:%d", port)); err6 == nil {
			return c6, nil
		}
	}
	return c, err
}

// add registers spec with the manager, answered by localPort here.
func (x *intercepts) add(ctx context.Context, ctl managerpb.ManagerClient, spec *managerpb.InterceptSpec, localPort uint32) (*managerpb.Intercept, error) {
	spec = proto.Clone(spec).(*managerpb.InterceptSpec)
	x.mu.Lock()
	var prev *localIntercept
	for _, li := range x.byID {
		if li.spec.GetNamespace() == spec.GetNamespace() && li.spec.GetName() == spec.GetName() {
			prev = li
		}
	}
	x.next++
	spec.LaptopId = x.next
	x.mu.Unlock()

	ic, err := ctl.CreateIntercept(ctx, spec)
	if err != nil {
		return nil, err
	}
	x.mu.Lock()
	if prev != nil {
		x.stopLocked(prev)
		delete(x.byID, prev.spec.GetLaptopId())
	}
	li := &localIntercept{spec: spec, port: localPort, pb: ic}
	x.byID[spec.LaptopId] = li
	x.startLocked(li)
	x.mu.Unlock()
	ic = proto.Clone(ic).(*managerpb.Intercept)
	ic.DirectKey = nil // the CLI prints what it gets
	x.log.Info("intercepting", "name", spec.GetName(), "namespace", spec.GetNamespace(), "workload", spec.GetWorkload(),
		"port", spec.GetPort(), "local_port", localPort, "mode", spec.GetMode().String())
	return ic, nil
}

// remove ends ns/name at the manager and here.
func (x *intercepts) remove(ctx context.Context, ctl managerpb.ManagerClient, ns, name string) error {
	_, err := ctl.RemoveIntercept(ctx, &managerpb.RemoveInterceptRequest{Namespace: ns, Name: name})
	x.mu.Lock()
	for id, li := range x.byID {
		if li.spec.GetNamespace() == ns && li.spec.GetName() == name {
			x.stopLocked(li)
			delete(x.byID, id)
		}
	}
	x.mu.Unlock()
	return err
}

// removeAll ends every intercept at the manager; for quit.
func (x *intercepts) removeAll(ctx context.Context, ctl managerpb.ManagerClient) {
	for _, li := range x.list() {
		if err := x.remove(ctx, ctl, li.GetSpec().GetNamespace(), li.GetSpec().GetName()); err != nil {
			x.log.Warn("end intercept", "name", li.GetSpec().GetName(), "err", err)
		}
	}
}

// probe is the rpc.ProbeToken of this laptop's intercept laptopID, "" when
// it has none.
func (x *intercepts) probe(laptopID uint64) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if li := x.byID[laptopID]; li != nil {
		return rpc.ProbeToken(li.pb.GetDirectKey())
	}
	return ""
}

// list returns this laptop's intercepts as the manager confirmed them.
func (x *intercepts) list() []*managerpb.Intercept {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]*managerpb.Intercept, 0, len(x.byID))
	for _, li := range x.byID {
		pb := proto.Clone(li.pb).(*managerpb.Intercept)
		pb.DirectKey = nil
		out = append(out, pb)
	}
	slices.SortFunc(out, func(a, b *managerpb.Intercept) int {
		return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName())
	})
	return out
}

// reregister gives a new session (the manager restarted, the port-forward
// broke) the intercepts the old one held. One that is refused now (someone
// took the port meanwhile) is dropped with a warning.
func (x *intercepts) reregister(ctx context.Context, ctl managerpb.ManagerClient) {
	x.mu.Lock()
	all := make([]*localIntercept, 0, len(x.byID))
	for _, li := range x.byID {
		all = append(all, li)
	}
	x.mu.Unlock()
	for _, li := range all {
		ic, err := ctl.CreateIntercept(ctx, li.spec)
		x.mu.Lock()
		if err != nil {
			x.stopLocked(li)
			delete(x.byID, li.spec.GetLaptopId())
			x.log.Warn("intercept lost in the reconnect", "name", li.spec.GetName(), "err", err)
		} else {
			li.pb = ic // a new id and key: the sidecars forgot the old ones
			x.startLocked(li)
		}
		x.mu.Unlock()
	}
}

// serve answers one stream the manager opened for an intercepted
// connection, or a spare a sidecar took: dial the local process, say how
// that went, relay.
func (x *intercepts) serve(ctx context.Context, st net.Conn, h rpc.Header) {
	defer st.Close()
	x.mu.Lock()
	li, ok := x.byID[h.Flow]
	x.mu.Unlock()
	if !ok {
		_, _ = st.Write([]byte{byte(rpc.StatusUnreachable)})
		return
	}
	c, err := x.dial(ctx, li.port)
	if err != nil {
		code := rpc.StatusUnreachable
		if errors.Is(err, syscall.ECONNREFUSED) {
			code = rpc.StatusRefused
		}
		_, _ = st.Write([]byte{byte(code)})
		return
	}
	defer c.Close()
	if _, err := st.Write([]byte{byte(rpc.StatusOK)}); err != nil {
		return
	}
	relay.Conns(ctx, st, c, relay.Options{Buffers: &x.buffers})
}
