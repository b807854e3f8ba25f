// Package sidecar is `tunnel-agent sidecar`, the container tunnel adds to an
// intercepted workload's pods. The workload's Service is pointed at the
// sidecar's capture ports; each captured connection or HTTP request goes to
// the laptop whose intercept takes it (through the manager, which relays it
// over that laptop's session) or, as before, to the app container.
package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
)

// Capture maps a port the sidecar listens on to the app's port it stands for.
type Capture struct {
	Listen uint16
	App    uint16
}

// ParseCapture reads "LISTEN=APP".
func ParseCapture(s string) (Capture, error) {
	l, a, ok := strings.Cut(s, "=")
	lp, err1 := strconv.ParseUint(l, 10, 16)
	ap, err2 := strconv.ParseUint(a, 10, 16)
	if !ok || err1 != nil || err2 != nil || lp == 0 || ap == 0 {
		return Capture{}, fmt.Errorf("capture %q: want LISTEN=APP, two port numbers", s)
	}
	return Capture{Listen: uint16(lp), App: uint16(ap)}, nil
}

func (c Capture) String() string { return fmt.Sprintf("%d=%d", c.Listen, c.App) }

// Config is what the sidecar is told by the pod template.
type Config struct {
	Manager string // the manager's session address, host:port
	// ManagerKey is the pin (rpc.KeyPin) of the manager's key: the session
	// is TLS and the manager must show that key. Empty: plain TCP, for a
	// manager installed before it had one.
	ManagerKey  string
	Namespace   string
	Workload    string
	Pod         string
	PodIP       netip.Addr // the app listens here (and, usually, on every address)
	Captures    []Capture
	MetricsAddr string        // /metrics and /healthz
	DirectAddr  string        // where laptops' port-forwards open spares; on loopback
	TokenFile   string        // the pod-bound token shown to the manager
	Sniff       time.Duration // wait for a client's first bytes before treating it as not HTTP
}

// dialManager dials the manager: over TLS when pin names its key, which
// is then the only one accepted (its certificate is self-signed, and
// nothing else about it is checked).
func dialManager(pin string) func(ctx context.Context, addr string) (net.Conn, error) {
	// A connect inside the cluster takes milliseconds; one that does not
	// went to an endpoint that is gone (a manager pod just replaced, its
	// address not yet out of kube-proxy's rules). Give up soon and try
	// again, rather than sit out the whole session timeout.
	nd := &net.Dialer{Timeout: 2 * time.Second}
	if pin == "" {
		return func(ctx context.Context, addr string) (net.Conn, error) {
			return nd.DialContext(ctx, "tcp", addr)
		}
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("the manager showed no certificate")
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("the manager's certificate: %w", err)
			}
			if got := rpc.KeyPin(cert); got != pin {
				return fmt.Errorf("the server at the manager's address shows key %s, not the manager's %s", got, pin)
			}
			return nil
		},
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		// Only the connect is held to 2 s: many sidecars at once may keep
		// a new manager busy with handshakes for longer.
		c, err := nd.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
}

// readyGrace is how long a sidecar waits for the manager before it says
// it is ready anyway.
const readyGrace = 5 * time.Second

// Run serves the captures and metrics until ctx ends.
func Run(ctx context.Context, log *slog.Logger, cfg Config) error {
	if cfg.Manager == "" || cfg.Namespace == "" || cfg.Workload == "" || !cfg.PodIP.IsValid() || len(cfg.Captures) == 0 {
		return errors.New("sidecar: manager, namespace, workload, pod IP and at least one capture are required")
	}
	if cfg.Sniff <= 0 {
		cfg.Sniff = 100 * time.Millisecond
	}
	var lc net.ListenConfig
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	for _, c := range cfg.Captures {
		ln, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", c.Listen))
		if err != nil {
			closeAll()
			return fmt.Errorf("listen on capture port %d: %w", c.Listen, err)
		}
		lns = append(lns, ln)
	}
	mln, err := lc.Listen(ctx, "tcp", cfg.MetricsAddr)
	if err != nil {
		closeAll()
		return fmt.Errorf("listen for metrics: %w", err)
	}
	// Without the direct port (the app holds it) laptops reach this pod
	// through the manager only: slower, never broken.
	var dln net.Listener
	if cfg.DirectAddr != "" {
		if dln, err = lc.Listen(ctx, "tcp", cfg.DirectAddr); err != nil {
			log.Warn("no direct path for laptops: its port is taken", "addr", cfg.DirectAddr, "err", err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := newMetrics()
	l := &link{
		log: log.With("subsystem", "link"), addr: cfg.Manager, ns: cfg.Namespace, name: cfg.Workload, pod: cfg.Pod,
		dial: dialManager(cfg.ManagerKey),
		token: func() (string, error) {
			b, err := os.ReadFile(cfg.TokenFile)
			if err != nil {
				return "", fmt.Errorf("read the token for the manager: %w", err)
			}
			return strings.TrimSpace(string(b)), nil
		},
	}
	caps := make([]*capture, len(cfg.Captures))
	// The proxy's and the relays' copy buffers: bytes to and from a laptop
	// cross the port-forward in fewer, fuller frames.
	buffers := &relay.Buffers{Size: ioBuffer}
	d := newDirect(log.With("subsystem", "direct"), l, cfg.Pod)
	for i, c := range cfg.Captures {
		caps[i] = &capture{
			log: log.With("subsystem", "capture", "port", c.App), link: l, direct: d, metrics: m, sniff: cfg.Sniff,
			app: netip.AddrPortFrom(cfg.PodIP, c.App), port: uint32(c.App), pod: cfg.Pod,
			buffers: buffers,
		}
		caps[i].http = newHTTPMode(caps[i].log, caps[i], m)
	}
	l.onChange = func() { // connections of ended intercepts go
		for _, cp := range caps {
			cp.reap()
		}
		d.reap()
	}
	var wg sync.WaitGroup
	wg.Go(func() { l.run(ctx) })
	if dln != nil {
		wg.Go(func() { d.serve(ctx, dln) })
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	// Ready once the intercepts are known, so a new pod never serves a
	// request an intercept should have taken; but not held back by a
	// manager that is away, since the app must keep serving.
	start := time.Now()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !l.synced.Load() && time.Since(start) < readyGrace {
			http.Error(w, "waiting for the manager", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() { _ = hs.Serve(mln) })
	context.AfterFunc(ctx, func() { hs.Close() })

	errs := make(chan error, len(lns))
	for i, cp := range caps {
		wg.Go(func() { errs <- cp.serve(ctx, lns[i]) })
		log.Info("capturing", "listen", cfg.Captures[i].Listen, "app", cp.app.String())
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	cancel()
	closeAll()
	wg.Wait()
	return runErr
}
