package sidecar

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
)

// errNoLink means the sidecar has no session to the manager right now.
var errNoLink = errors.New("no session to the tunnel manager")

// link is the sidecar's session to the manager: a yamux client over one
// TCP connection to the manager's Service. It keeps the workload's
// intercepts current and opens a stream per intercepted connection. When
// the manager is away the table is empty, so every connection goes to the
// app: a sidecar never stops its workload from serving.
type link struct {
	log      *slog.Logger
	addr     string // the manager's session address
	ns, name string // the workload
	pod      string
	dial     func(ctx context.Context, addr string) (net.Conn, error)

	table  atomic.Pointer[table]
	synced atomic.Bool // the manager has sent the intercepts once
	// onChange runs after every change of the table.
	onChange func()
	// token reads the pod's token for the manager, afresh each session:
	// the kubelet rotates it.
	token func() (string, error)

	mu  sync.Mutex // guards following
	mux *yamux.Session
}

// table is the intercepts on the workload, by the app port they take.
type table map[uint32][]*managerpb.Intercept

func (t *table) on(port uint32) []*managerpb.Intercept {
	if t == nil {
		return nil
	}
	return (*t)[port]
}

func newTable(ics []*managerpb.Intercept) *table {
	t := table{}
	for _, ic := range ics {
		p := ic.GetSpec().GetPort()
		t[p] = append(t[p], ic)
	}
	return &t
}

// intercepts returns the intercepts on port now.
func (l *link) intercepts(port uint32) []*managerpb.Intercept { return l.table.Load().on(port) }

// intercept returns the workload's intercept with the manager's id, or nil.
func (l *link) intercept(id uint64) *managerpb.Intercept {
	if t := l.table.Load(); t != nil {
		for _, ics := range *t {
			for _, ic := range ics {
				if ic.GetId() == id {
					return ic
				}
			}
		}
	}
	return nil
}

// hasProbe says whether one of the workload's intercepts now has probe as
// its rpc.ProbeToken.
func (l *link) hasProbe(probe string) bool {
	if t := l.table.Load(); t != nil {
		for _, ics := range *t {
			for _, ic := range ics {
				if subtle.ConstantTimeCompare([]byte(rpc.ProbeToken(ic.GetDirectKey())), []byte(probe)) == 1 {
					return true
				}
			}
		}
	}
	return false
}

// ids returns the manager's ids of the workload's intercepts now.
func (l *link) ids() map[uint64]bool {
	live := map[uint64]bool{}
	if t := l.table.Load(); t != nil {
		for _, ics := range *t {
			for _, ic := range ics {
				live[ic.GetId()] = true
			}
		}
	}
	return live
}

// run keeps the session up until ctx ends, reconnecting with backoff.
func (l *link) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := l.session(ctx)
		l.table.Store(nil)
		if l.onChange != nil {
			l.onChange()
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 30*time.Second {
			backoff = 100 * time.Millisecond
		}
		l.log.Warn("session to the manager ended; traffic goes to the app until it is back", "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff + rand.N(backoff/2)):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 2*time.Second) // a user waits on the first try that works
	}
}

// session runs one session: connect, watch the intercepts until it breaks.
func (l *link) session(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := l.dial(dctx, l.addr)
	cancel()
	if err != nil {
		return fmt.Errorf("dial the manager at %s: %w", l.addr, err)
	}
	cfg := yamux.DefaultConfig()
	cfg.KeepAliveInterval = 5 * time.Second
	cfg.MaxStreamWindowSize = 16 << 20
	cfg.StreamCloseTimeout = time.Minute
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(l.log.Handler(), slog.LevelDebug)
	mux, err := yamux.Client(rpc.CoalesceWrites(conn), cfg)
	if err != nil {
		conn.Close()
		return err
	}
	defer mux.Close()
	cc, err := rpc.DialControl(mux)
	if err != nil {
		return err
	}
	defer cc.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(wctx, func() { mux.Close() })
	token, err := l.token()
	if err != nil {
		return err
	}
	watch, err := managerpb.NewManagerClient(cc).WatchIntercepts(wctx,
		&managerpb.WatchInterceptsRequest{Namespace: l.ns, Workload: l.name, Pod: l.pod, Token: token, SidecarVersion: version.Get().Version})
	if err != nil {
		return fmt.Errorf("watch intercepts: %w", err)
	}
	l.mu.Lock()
	l.mux = mux
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.mux = nil
		l.mu.Unlock()
	}()
	l.log.Info("session to the manager up", "manager", l.addr)
	for {
		set, err := watch.Recv()
		if err != nil {
			return fmt.Errorf("watch intercepts: %w", err)
		}
		l.table.Store(newTable(set.GetIntercepts()))
		l.synced.Store(true)
		if l.onChange != nil {
			l.onChange()
		}
		l.log.Info("intercepts changed", "intercepts", describe(set.GetIntercepts()))
	}
}

func describe(ics []*managerpb.Intercept) []string {
	out := make([]string, 0, len(ics))
	for _, ic := range ics {
		s := ic.GetSpec()
		out = append(out, fmt.Sprintf("%s:%d %s by %s", s.GetName(), s.GetPort(), s.GetMode(), ic.GetUser()))
	}
	return out
}

// open opens a stream to the laptop that holds intercept ic and waits for
// its answer: the local process accepted the connection, or why not.
func (l *link) open(ctx context.Context, ic *managerpb.Intercept, client netip.AddrPort) (net.Conn, error) {
	st, err := l.start(ic, client)
	if err != nil {
		return nil, err
	}
	if err := awaitStatus(ctx, st); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// awaitStatus reads a laptop's answer to a new connection. A laptop that
// never answers must not hold the request: after ctx's deadline (or
// laptopAnswer), or its end, the request goes to the app instead.
func awaitStatus(ctx context.Context, c net.Conn) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(laptopAnswer)
	}
	_ = c.SetReadDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := rpc.ReadStatus(c); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Time{})
	return nil
}

// start opens a stream for intercept ic and writes its header; the
// laptop's status is the first byte the stream will read.
func (l *link) start(ic *managerpb.Intercept, client netip.AddrPort) (halfCloser, error) {
	l.mu.Lock()
	mux := l.mux
	l.mu.Unlock()
	if mux == nil {
		return halfCloser{}, errNoLink
	}
	st, err := mux.OpenStream()
	if err != nil {
		return halfCloser{}, fmt.Errorf("%w: %v", errNoLink, err)
	}
	if !client.IsValid() {
		client = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	}
	if err := rpc.WriteHeader(st, rpc.Header{Kind: rpc.KindIntercept, Dst: client, Flow: ic.GetId()}); err != nil {
		st.Close()
		return halfCloser{}, err
	}
	return halfCloser{st}, nil
}

// laptopAnswer bounds the wait for a laptop's status.
const laptopAnswer = 5 * time.Second

// halfCloser: a yamux Close only ends our writes.
type halfCloser struct{ *yamux.Stream }

func (h halfCloser) CloseWrite() error { return h.Stream.Close() }
