package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"strings"
	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// maxMirrorBody bounds the request body a mirror copies: a larger request
// still reaches the app, unmirrored. maxMirrorBytes bounds what all mirrors
// in flight hold, and maxMirrors their number: past either, a copy is
// dropped (and counted), never the request.
const (
	maxMirrorBody  = 1 << 20
	maxMirrorBytes = 16 << 20
	maxMirrors     = 64
)

// Bounds on what one client can hold of the sidecar: its request's headers
// must come within headerTimeout and fit in maxHeaderBytes, and a kept-alive
// connection that idles for idleTimeout is closed.
const (
	headerTimeout  = 10 * time.Second
	maxHeaderBytes = 64 << 10
	idleTimeout    = 2 * time.Minute
)

// httpMode serves the HTTP connections of one captured port request by
// request: each goes to the laptop of the intercept that takes it (global,
// or personal with a matching header) or to the app; mirrors get a copy.
type httpMode struct {
	log     *slog.Logger
	c       *capture
	server  *http.Server
	proxy   *httputil.ReverseProxy
	app     [2]*http.Transport // HTTP/1.1, h2c
	metrics *metrics

	mu      sync.Mutex // guards following
	laptops map[uint64]*laptopPools
	// mirrorsOut and mirrorBytes are the copies in flight and their bodies.
	mirrorsOut, mirrorBytes int
}

type routeKey struct{}

// route is where one request goes: ic nil means the app.
type route struct {
	ic *managerpb.Intercept
}

func newHTTPMode(log *slog.Logger, c *capture, m *metrics) *httpMode {
	h := &httpMode{log: log, c: c, metrics: m, laptops: map[uint64]*laptopPools{}}
	dialApp := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", c.app.String())
	}
	h.app = transports(dialApp, keepIdle)
	h.proxy = &httputil.ReverseProxy{
		Director: func(r *http.Request) {
			r.URL.Scheme, r.URL.Host = "http", c.app.String()
			if _, ok := r.Header["X-Forwarded-For"]; !ok {
				r.Header["X-Forwarded-For"] = nil // pass requests on as they came
			}
		},
		Transport:     roundTripper(h.roundTrip),
		FlushInterval: -1, // streaming responses pass at once
		BufferPool:    c.buffers,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ErrorHandler:  h.proxyError,
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	h.server = &http.Server{
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return h
}

// How long a kept-alive connection may idle in a pool. A connection over a
// spare idles only briefly: when the laptop's server closes it, the kubelet's
// port-forward passes that on up to a second late (containerd waits that
// long for the other direction), and a request sent meanwhile is lost, a
// POST for good. Servers close idle connections after 2 s (gunicorn) or 5 s
// (Node) at the soonest; a fresh spare costs one round trip for the
// laptop's answer.
const (
	keepIdle       = 90 * time.Second
	keepIdleDirect = time.Second
)

// transports returns an HTTP/1.1 and an h2c transport dialing with dial.
func transports(dial func(ctx context.Context, network, addr string) (net.Conn, error), idle time.Duration) [2]*http.Transport {
	var out [2]*http.Transport
	for i := range out {
		var p http.Protocols
		if i == 0 {
			p.SetHTTP1(true)
		} else {
			p.SetUnencryptedHTTP2(true)
		}
		out[i] = &http.Transport{
			DialContext:         dial,
			Protocols:           &p,
			MaxIdleConnsPerHost: 256,
			WriteBufferSize:     ioBuffer,
			ReadBufferSize:      ioBuffer,
			IdleConnTimeout:     idle,
			DisableCompression:  true,
		}
	}
	return out
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ServeHTTP picks the request's route, starts its mirrors and proxies it.
func (h *httpMode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if probe := r.Header.Get(rpc.ProbeHeader); probe != "" {
		w.Header().Set(rpc.SidecarHeader, h.c.pod)
		if len(probe) == 2*16 { // a ProbeToken
			has := "no"
			if h.c.link.hasProbe(probe) {
				has = "yes"
			}
			w.Header().Set(rpc.ProbeHasHeader, has)
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	var target *managerpb.Intercept
	var mirrors []*managerpb.Intercept
	// The kubelet's probes ask after the app, not the laptop: on a port
	// redirected inside the pod they come here too.
	probe := strings.HasPrefix(r.UserAgent(), "kube-probe/")
	for _, ic := range h.c.link.intercepts(h.c.port) {
		if probe {
			break
		}
		s := ic.GetSpec()
		switch s.GetMode() {
		case managerpb.InterceptMode_GLOBAL:
			target = ic
		case managerpb.InterceptMode_PERSONAL:
			if target == nil && r.Header.Get(s.GetHeaderName()) == s.GetHeaderValue() {
				target = ic
			}
		case managerpb.InterceptMode_MIRROR:
			mirrors = append(mirrors, ic)
		}
	}
	if len(mirrors) > 0 {
		h.mirror(r, mirrors)
	}
	ctx := context.WithValue(r.Context(), routeKey{}, route{ic: target})
	h.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// roundTrip sends a request where its route says; a laptop that cannot take
// it (nothing listens, no session) passes it to the app unless the
// intercept says --no-fallback.
func (h *httpMode) roundTrip(r *http.Request) (*http.Response, error) {
	rt, _ := r.Context().Value(routeKey{}).(route)
	proto := 0
	if r.ProtoMajor == 2 {
		proto = 1
	}
	if rt.ic == nil {
		return h.app[proto].RoundTrip(r)
	}
	name := rt.ic.GetSpec().GetName()
	var body *guardedBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &guardedBody{rc: r.Body}
		r.Body = body
	}
	header := r.Header
	r.Header = forLaptop(r)
	resp, err := h.laptop(rt.ic)[proto].RoundTrip(r)
	r.Header = header // a fallback goes to the app as the request came
	if err == nil {
		h.metrics.requests.WithLabelValues(name, "laptop").Inc()
		return resp, nil
	}
	var de dialError
	if !errors.As(err, &de) || rt.ic.GetSpec().GetNoFallback() || (body != nil && body.read.Load()) {
		h.metrics.requests.WithLabelValues(name, "failed").Inc()
		return nil, fmt.Errorf("intercept %s: %w", name, err)
	}
	h.metrics.fallbacks.WithLabelValues(name).Inc()
	h.log.Debug("laptop cannot answer; falling back to the app", "intercept", name, "err", err)
	if body != nil {
		r.Body = body.rc // never read: the dial failed first
	}
	return h.app[proto].RoundTrip(r)
}

// laptopPools are the kept-alive connections to one intercept's laptop:
// over its direct spares, or through the manager. Requests use the direct
// pool while the laptop keeps spares here, so that once they come the
// manager's connections are left (and closed when idle) rather than
// reused for as long as requests keep them alive.
type laptopPools struct {
	direct, manager [2]*http.Transport
	onDirect        bool
	repooled        time.Time // when the manager pool's idle connections were last closed
}

// repoolEvery is how often the idle connections through the manager are
// closed. The manager picks the laptop's path per connection (its
// WireGuard path while the laptop's probes offer it, the session's stream
// when not); a pooled connection would keep the path it started on for as
// long as requests keep it busy. A request's fresh connection costs a
// round trip in the cluster and one over the path.
const repoolEvery = 10 * time.Second

// laptop returns the transports that reach ic's laptop now.
func (h *httpMode) laptop(ic *managerpb.Intercept) *[2]*http.Transport {
	h.mu.Lock()
	lp, ok := h.laptops[ic.GetId()]
	if !ok {
		lp = &laptopPools{
			direct:  transports(func(ctx context.Context, _, _ string) (net.Conn, error) { return h.dialLaptop(ctx, ic, true) }, keepIdleDirect),
			manager: transports(func(ctx context.Context, _, _ string) (net.Conn, error) { return h.dialLaptop(ctx, ic, false) }, keepIdle),
		}
		h.laptops[ic.GetId()] = lp
	}
	use, repool := &lp.direct, false
	if !h.c.direct.up(ic.GetId()) {
		lp.onDirect, use = false, &lp.manager
		if now := time.Now(); now.Sub(lp.repooled) > repoolEvery {
			lp.repooled, repool = now, true
		}
	} else if !lp.onDirect {
		lp.onDirect, repool = true, true
	}
	h.mu.Unlock()
	if repool {
		closeIdle(lp.manager) // outside h.mu, which every request takes
	}
	return use
}

// dialLaptop opens a connection to ic's laptop: on a spare if direct and
// one is left, else through the manager.
func (h *httpMode) dialLaptop(ctx context.Context, ic *managerpb.Intercept, direct bool) (net.Conn, error) {
	name := ic.GetSpec().GetName()
	path := "direct"
	var c net.Conn
	var err error
	if direct {
		c, err = h.c.direct.open(ctx, ic)
	}
	if c == nil && err == nil {
		path = "manager"
		c, err = h.c.link.open(ctx, ic, netip.AddrPort{})
	}
	if err != nil {
		return nil, dialError{err}
	}
	h.metrics.laptopConns.WithLabelValues(name, path).Inc()
	return countingConn{Conn: c, out: h.metrics.bytes.WithLabelValues(name, "to_laptop"),
		in: h.metrics.bytes.WithLabelValues(name, "from_laptop")}, nil
}

func closeIdle(ts [2]*http.Transport) {
	ts[0].CloseIdleConnections()
	ts[1].CloseIdleConnections()
}

// forget drops the pools of intercepts that ended.
func (h *httpMode) forget(live map[uint64]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, lp := range h.laptops {
		if !live[id] {
			closeIdle(lp.direct)
			closeIdle(lp.manager)
			delete(h.laptops, id)
		}
	}
}

func (h *httpMode) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Debug("proxy error", "err", err, "path", r.URL.Path)
	if errors.Is(err, context.Canceled) {
		return
	}
	http.Error(w, err.Error(), http.StatusBadGateway)
}

// mirror sends a copy of r to each mirroring laptop and forgets the
// answers. The body is read here, up to maxMirrorBody, and given back to r.
func (h *httpMode) mirror(r *http.Request, mirrors []*managerpb.Intercept) {
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, maxMirrorBody+1))
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
		if err != nil || len(b) > maxMirrorBody {
			return
		}
		body = b
	}
	if !h.takeMirrors(len(mirrors), len(body)) {
		for _, ic := range mirrors {
			h.metrics.requests.WithLabelValues(ic.GetSpec().GetName(), "mirror_dropped").Inc()
		}
		return
	}
	for _, ic := range mirrors {
		out := r.Clone(context.WithoutCancel(r.Context()))
		out.Header = forLaptop(r)
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = "http", h.c.app.String()
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		proto := 0
		if r.ProtoMajor == 2 {
			proto = 1
		}
		t := h.laptop(ic)[proto]
		name := ic.GetSpec().GetName()
		go func() {
			defer h.giveMirror(len(body))
			ctx, cancel := context.WithTimeout(out.Context(), 30*time.Second)
			defer cancel()
			resp, err := t.RoundTrip(out.WithContext(ctx))
			if err != nil {
				h.metrics.requests.WithLabelValues(name, "mirror_failed").Inc()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			h.metrics.requests.WithLabelValues(name, "mirrored").Inc()
		}()
	}
}

// takeMirrors reserves room for n copies of a body of size bytes.
func (h *httpMode) takeMirrors(n, size int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mirrorsOut+n > maxMirrors || h.mirrorBytes+n*size > maxMirrorBytes {
		return false
	}
	h.mirrorsOut += n
	h.mirrorBytes += n * size
	return true
}

func (h *httpMode) giveMirror(size int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mirrorsOut--
	h.mirrorBytes -= size
}

// forLaptop is r's header as a laptop gets it: X-Forwarded-For names the
// client the sidecar saw, whatever the client sent, so the developer's
// framework never takes the Internet for localhost.
func forLaptop(r *http.Request) http.Header {
	out := r.Header.Clone()
	if out == nil {
		out = http.Header{}
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		out.Set("X-Forwarded-For", host)
	} else {
		out.Del("X-Forwarded-For")
	}
	return out
}

// dialError marks a failure to reach the laptop's process: nothing of the
// request was sent, so it may go to the app instead.
type dialError struct{ err error }

func (e dialError) Error() string { return e.err.Error() }
func (e dialError) Unwrap() error { return e.err }

// guardedBody keeps a request body open through a failed dial, so the
// request can still go to the app; read says whether any of it was sent.
// The server closes the real body when the handler returns.
type guardedBody struct {
	rc   io.ReadCloser
	read atomic.Bool
}

func (g *guardedBody) Read(p []byte) (int, error) {
	g.read.Store(true)
	return g.rc.Read(p)
}

func (g *guardedBody) Close() error { return nil }

// countingConn counts a laptop connection's bytes each way.
type countingConn struct {
	net.Conn
	out, in relay.Counter
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(float64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(float64(n))
	return n, err
}

// ioBuffer is the size of the sidecar's copy and socket buffers.
const ioBuffer = 256 << 10
