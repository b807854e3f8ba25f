package manager

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/time/rate"

	"tunnel.dev/tunnel/rpc"
)

// serveSession runs one laptop's yamux session over conn: the laptop opens
// the streams, the manager only accepts them. It returns when the session
// ends (the laptop left, keepalive failed) or ctx ends.
func (m *Manager) serveSession(ctx context.Context, conn net.Conn, control *streamListener) {
	start := time.Now()
	log := m.logger.With("session", conn.RemoteAddr().String())
	sess, err := yamux.Server(rpc.CoalesceWrites(conn), m.yamuxConfig(log))
	if err != nil { // only for an invalid config
		log.Error("start session", "err", err)
		conn.Close()
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()

	m.metrics.sessionsTotal.Inc()
	m.metrics.sessionsActive.Inc()
	defer m.metrics.sessionsActive.Dec()
	log.Info("session opened")

	s := &session{ctx: ctx, m: m, log: log, control: control, mux: sess, id: rand.Text()[:12],
		fromPod: m.isPod(conn.RemoteAddr()), badLog: rate.Sometimes{First: 3, Interval: time.Minute},
		dials: make(chan struct{}, m.cfg.MaxDials)}
	// Laptops all come from the port-forward's loopback: each is its own
	// peer. A pod is its address, however many sessions it opens.
	s.peer = "session " + s.id
	if s.fromPod {
		s.peer = hostOf(conn.RemoteAddr())
		// A sidecar needs one session; a pod gets a few, not the
		// manager's every stream slot.
		if !m.podSessions.take(s.peer) {
			m.metrics.refused.WithLabelValues("pod", "limit").Inc()
			log.Warn("refusing a session: its pod has enough", "limit", maxPodSessions)
			sess.Close()
			return
		}
		defer m.podSessions.give(s.peer)
	}
	defer m.dropWireGuard(s)
	defer func() {
		if n := m.intercepts.dropSession(s); n > 0 {
			log.Info("session ended: its intercepts end too", "intercepts", n)
		}
	}()
	var wg sync.WaitGroup
	streams := 0
	for {
		st, err := sess.AcceptStreamWithContext(ctx)
		if err != nil {
			break
		}
		streams++
		release, ok := m.openStream(s)
		if !ok {
			st.Close()
			continue
		}
		wg.Go(func() { s.serveStream(ctx, st, release) })
	}
	cancel() // ends the streams' dials and relays
	sess.Close()
	wg.Wait()
	log.Info("session closed", "streams", streams, "duration", time.Since(start).Round(time.Millisecond).String())
}

// yamuxConfig: keepalives notice a vanished laptop within about three
// intervals (a ping unanswered for two intervals ends the session); a
// stream closed on one side only is dropped after a minute, as on the
// laptop. A stream's receive window is what its sender may make the manager
// hold for it (before its dial succeeds, or while its destination does not
// read): it stays at yamux's initial 256 KiB here (the laptop's own window,
// for downloads, is larger), so a session's memory is bounded by its
// streams, MaxStreams × 256 KiB.
func (m *Manager) yamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = m.cfg.KeepAlive
	cfg.ConnectionWriteTimeout = 2 * m.cfg.KeepAlive
	cfg.MaxStreamWindowSize = streamWindow
	cfg.StreamCloseTimeout = time.Minute
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(log.With("subsystem", "yamux").Handler(), slog.LevelWarn)
	return cfg
}

// streamWindow is the manager's receive window per stream, yamux's least.
const streamWindow = 256 << 10

// session is the state the streams of one session share. A laptop's
// session arrives through a port-forward (from loopback); a sidecar's comes
// from its pod over the cluster network.
type session struct {
	ctx     context.Context // ends with the session
	m       *Manager
	log     *slog.Logger
	control *streamListener
	mux     *yamux.Session
	id      string
	fromPod bool
	peer    string         // whom the rate limits count against
	badLog  rate.Sometimes // bad headers are logged a few times, then counted only
	open    int            // streams open now; guarded by the Manager's streamSlots
	dials   chan struct{}  // one per dial in flight, MaxDials at most
	// wgPending counts the session's WireGuard connections waiting for
	// their dial (wgPendingPerSession at most).
	wgPending atomic.Int32
	// wgFailed and wgRefused count the dials over WireGuard that failed,
	// and of them those the reach rule refused: the laptop hears them in
	// its probes' answers.
	wgFailed, wgRefused atomic.Uint64
	// wgLaptopAfter is when (unix ns) the manager may next try to open an
	// intercepted connection to the laptop over WireGuard.
	wgLaptopAfter atomic.Int64
	// wgOpen counts the session's open connections over WireGuard, which
	// share its send budget.
	wgOpen atomic.Int32

	mu    sync.Mutex // guards following
	ident Identity   // set by Hello, verified by the API server; zero when not
	host  string
	why   string // why ident is empty
	nonce []byte // Challenge's, once; Hello's proof must be signed over it
	// controls counts the session's open control streams.
	controls int
	// sidecarOf is the namespace/workload a sidecar session watches: its
	// intercept streams may name only that workload's intercepts.
	sidecarOf string
}

func (s *session) who() (user, host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ident.User, s.host
}

// identity is the session's verified user; its User is "" when Hello did
// not verify one.
func (s *session) identity() Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ident
}

// sessionAddr is the peer address gRPC sees on a control stream: it is how
// a control call finds the session it came on.
type sessionAddr struct{ s *session }

func (a sessionAddr) Network() string { return "tunnel-session" }
func (a sessionAddr) String() string  { return a.s.id }

// controlConn is a control stream as gRPC sees it: its peer address names
// the session, and closing it gives its slots back.
type controlConn struct {
	net.Conn
	s       *session
	once    sync.Once
	release func()
}

func (c *controlConn) RemoteAddr() net.Addr { return sessionAddr{c.s} }

func (c *controlConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// maxPodSessions bounds the sessions one pod address may hold at once.
const maxPodSessions = 4

// peerCount counts sessions per peer.
type peerCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *peerCount) take(peer string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = map[string]int{}
	}
	if p.n[peer] >= maxPodSessions {
		return false
	}
	p.n[peer]++
	return true
}

func (p *peerCount) give(peer string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[peer]--; p.n[peer] <= 0 {
		delete(p.n, peer)
	}
}

// maxControls bounds a session's control streams (gRPC connections): a
// laptop uses one, a sidecar one, a reconnecting client briefly two.
const maxControls = 4

func (s *session) takeControl() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.controls >= maxControls {
		return false
	}
	s.controls++
	return true
}

func (s *session) giveControl() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.controls--
}

func isLoopback(a net.Addr) bool {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	return false
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// serveStream reads a stream's header, within HeaderTimeout so a silent
// stream never holds anything, and hands the stream to its kind's handler.
// A bad header closes that stream only.
//
// release gives the stream's slot back; a control stream keeps it until
// gRPC closes the connection, and a session has at most maxControls.
func (s *session) serveStream(ctx context.Context, st net.Conn, release func()) {
	m := s.m
	held := false
	defer func() {
		if !held {
			release()
		}
	}()
	_ = st.SetReadDeadline(time.Now().Add(m.cfg.HeaderTimeout))
	h, err := rpc.ReadHeader(st)
	if err != nil {
		m.metrics.streams.WithLabelValues("bad").Inc()
		s.badLog.Do(func() { s.log.Warn("closing stream with a bad header", "err", err) })
		st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	m.metrics.streams.WithLabelValues(h.Kind.String()).Inc()
	switch h.Kind {
	case rpc.KindControl:
		if !s.takeControl() {
			m.metrics.refused.WithLabelValues(sessionKind(s), "limit").Inc()
			s.badLog.Do(func() { s.log.Warn("refusing control streams past the session's limit", "limit", maxControls) })
			st.Close()
			return
		}
		held = true
		s.control.deliver(ctx, &controlConn{Conn: st, s: s, release: func() { s.giveControl(); release() }})
	case rpc.KindTCP:
		m.serveTCP(ctx, s, st, h)
	case rpc.KindUDP:
		m.serveUDP(ctx, s, st, h)
	case rpc.KindIntercept:
		if !s.fromPod && !m.cfg.AllowLoopback {
			// Only sidecars send intercepted connections; a laptop that
			// tried would reach another laptop's local ports.
			s.badLog.Do(func() { s.log.Warn("refusing an intercept stream from a laptop session") })
			_ = writeStatus(st, rpc.StatusForbidden)
			st.Close()
			return
		}
		m.serveIntercepted(ctx, s, st, h)
	default: // ReadHeader returns no other kind
		st.Close()
	}
}
