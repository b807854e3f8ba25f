// Package manager is the hub of tunnel inside the cluster. Laptops connect
// to it through a Kubernetes port-forward and run a yamux session over each
// connection; every stream opens with an rpc.Header that says what it
// carries: the gRPC control plane (Hello, WatchCluster, Resolve), one TCP
// connection, or one UDP flow to a pod or service.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
	"tunnel.dev/tunnel/rpc"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tunnel.dev/tunnel/relay"
)

// Config tunes a Manager. Zero fields take the defaults below.
type Config struct {
	Listen         string        // TCP address for sessions, default ":8022"
	MetricsAddr    string        // Prometheus /metrics and /healthz, default ":9090"
	ResolvConf     string        // default "/etc/resolv.conf": the cluster's nameservers and domain
	DialTimeout    time.Duration // TCP dials to the cluster, default 10 s
	UDPIdleTimeout time.Duration // a UDP flow without datagrams either way ends, default 60 s
	HeaderTimeout  time.Duration // a stream must send its header within this, default 10 s
	KeepAlive      time.Duration // yamux keepalive interval: how fast a dead laptop is noticed, default 5 s
	DNSTimeout     time.Duration // per nameserver and transport, default 2 s

	// Reach is the rule for what a laptop may dial: ReachNamespaces
	// (default) or ReachCluster. AlsoReach adds networks outside the
	// cluster every verified user may dial (a database's subnet).
	Reach     string
	AlsoReach []netip.Prefix
	// InterceptHeaders are the header names (or prefixes, ending in "*")
	// personal intercepts may match on; default DefaultInterceptHeaders.
	InterceptHeaders []string
	// MaxStreams caps the streams one session has open at once, and
	// MaxStreamsTotal those of all sessions: past either, new streams are
	// refused and the other sessions go on. With a stream's window of
	// 256 KiB they bound what sessions can make the manager hold: 256 MiB
	// per session and 1 GiB in all by default (1024 and 4096 streams; a
	// load test's 1000 connections from one laptop fit). Connections over
	// the WireGuard path count as streams.
	MaxStreams      int
	MaxStreamsTotal int
	// SidecarRecheck is how often a watching sidecar's pod is checked
	// again; default 1 minute.
	SidecarRecheck time.Duration
	// MaxDials caps one session's dials in flight; more wait their turn
	// within DialTimeout. Default 64.
	MaxDials int

	// AllowLoopback lets streams reach 127.0.0.0/8 and ::1. For tests
	// only: in a pod it opens the manager's own ports to every laptop.
	AllowLoopback bool
}

func (c Config) withDefaults() Config {
	set := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&c.Listen, ":8022")
	set(&c.MetricsAddr, ":9090")
	set(&c.ResolvConf, "/etc/resolv.conf")
	setDur(&c.DialTimeout, 10*time.Second)
	setDur(&c.UDPIdleTimeout, 60*time.Second)
	setDur(&c.HeaderTimeout, 10*time.Second)
	setDur(&c.KeepAlive, 5*time.Second)
	setDur(&c.DNSTimeout, 2*time.Second)
	setDur(&c.SidecarRecheck, time.Minute)
	set(&c.Reach, rpc.ReachNamespaces)
	if c.MaxStreams <= 0 {
		c.MaxStreams = 1024
	}
	if c.MaxStreamsTotal <= 0 {
		c.MaxStreamsTotal = 4096
	}
	if c.MaxDials <= 0 {
		c.MaxDials = 64
	}
	return c
}

// Manager serves laptop sessions. It holds no goroutines of its own: they
// all belong to a Serve call and end with it.
type Manager struct {
	logger     *slog.Logger
	cfg        Config
	cluster    ClusterSource
	dns        forwarder
	metrics    *metrics
	intercepts *interceptTable
	buffers    relay.Buffers // of frameBody, for relayed connections

	// Seams for tests (the fuzz test must not reach the network); real
	// dials by default.
	dialTCP func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	dialUDP func(ctx context.Context, dst netip.AddrPort) (net.Conn, error)
	// identify verifies a session's proof of identity; nil verifies none.
	identify identifier
	// verifySidecar checks a sidecar's token; nil checks none (tests).
	verifySidecar sidecarVerifier
	// authorize asks the API server what a verified user may; nil lets
	// every user do everything (tests).
	authorize authorizer
	// isPod tells a session from a pod (a sidecar or nothing) from a
	// laptop's, which comes through a port-forward, from loopback.
	isPod func(net.Addr) bool

	reach       reach
	wg          *wireGuard // nil: no WireGuard path
	peerLimit   peerLimiter
	podSessions peerCount
	streamSlots streamSlots
}

// New returns a Manager that routes and resolves what cluster tells and
// forwards DNS to the nameservers of cfg.ResolvConf.
func New(logger *slog.Logger, cluster ClusterSource, cfg Config) (*Manager, error) {
	if logger == nil || cluster == nil {
		return nil, errors.New("manager: a logger and a cluster source are required")
	}
	cfg = cfg.withDefaults()
	if _, err := rpc.ParseReach(cfg.Reach); err != nil {
		return nil, err
	}
	logger = logger.With("subsystem", "manager")
	res, err := readResolvConf(cfg.ResolvConf)
	if err != nil {
		return nil, fmt.Errorf("start manager: %w", err)
	}
	if res.domain == "" {
		logger.Warn("no svc.<domain> entry in the search list: laptops get no cluster domain", "resolv_conf", cfg.ResolvConf)
	}
	logger.Info("forwarding DNS", "nameservers", res.servers, "cluster_domain", res.domain)
	m := &Manager{
		logger:  logger,
		cfg:     cfg,
		cluster: cluster,
		dns:     forwarder{resolver: res, timeout: cfg.DNSTimeout},
		metrics: newMetrics(),
		// Large buffers go to flows that move data, 512 at once (128 MiB).
		buffers:     relay.Buffers{Size: frameBody, Max: 512},
		intercepts:  newInterceptTable(cfg.InterceptHeaders),
		isPod:       func(a net.Addr) bool { return !isLoopback(a) },
		peerLimit:   peerLimiter{every: 2, burst: 10, max: 4096},
		streamSlots: streamSlots{perSession: cfg.MaxStreams, total: cfg.MaxStreamsTotal},
	}
	m.reach = reach{mode: cfg.Reach, also: cfg.AlsoReach, allowLoopback: cfg.AllowLoopback,
		access: &accessCache{ttl: 10 * time.Second, stale: 10 * time.Minute, max: 4096}, now: time.Now}
	if book, ok := cluster.(AddressBook); ok {
		m.reach.book = book
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout}
	m.dialTCP = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		return dialer.DialContext(ctx, "tcp", dst.String())
	}
	m.dialUDP = func(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
		return dialer.DialContext(ctx, "udp", dst.String())
	}
	return m, nil
}

// useAuthorizer makes a decide what verified users may, for intercepts and
// for reach.
func (m *Manager) useAuthorizer(a authorizer) {
	m.authorize = a
	m.reach.authorize = a
}

// streamSlots counts open streams per session and in all. Sessions from
// pods share a quarter of all: however many pods open streams, laptops
// keep the rest.
type streamSlots struct {
	perSession, total int

	mu            sync.Mutex
	open, podOpen int
}

// take reserves a slot for one of s's streams, or says there is none.
func (t *streamSlots) take(s *session) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.open >= t.perSession || t.open >= t.total || (s.fromPod && t.podOpen >= t.total/4) {
		return false
	}
	s.open++
	t.open++
	if s.fromPod {
		t.podOpen++
	}
	return true
}

func (t *streamSlots) give(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s.open--
	t.open--
	if s.fromPod {
		t.podOpen--
	}
}

// openStream reserves one of s's stream slots, for a stream of its
// session or a connection of its WireGuard path; release gives it back,
// once. Past its share a session gets refusals, counted and logged; the
// others go on.
func (m *Manager) openStream(s *session) (release func(), ok bool) {
	if !m.streamSlots.take(s) {
		m.metrics.refused.WithLabelValues(sessionKind(s), "limit").Inc()
		s.badLog.Do(func() { s.log.Warn("refusing streams past the session's limit", "limit", m.cfg.MaxStreams) })
		return nil, false
	}
	return sync.OnceFunc(func() { m.streamSlots.give(s) }), true
}

// Handler serves /metrics (the manager's own registry) and /healthz.
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
