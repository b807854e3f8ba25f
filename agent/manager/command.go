package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"tunnel.dev/tunnel/workload"
)

// Command is `tunnel-agent manager`: the hub, run as a Deployment.
func Command() *cobra.Command {
	var cfg Config
	var logLevel slog.Level
	var sidecarListen, tlsCert, tlsKey string
	var wg wgFlags
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Serve laptop sessions inside the cluster",
		Long: "Serve laptop sessions inside the cluster: accept yamux sessions on --listen, relay their\n" +
			"TCP and UDP streams into the cluster, forward their DNS queries to the pod's nameservers,\n" +
			"and serve Prometheus metrics and /healthz on --metrics-addr. Stops on SIGTERM.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			logger := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: logLevel}))
			return run(ctx, logger, cfg, sidecarListen, tlsCert, tlsKey, wg)
		},
	}
	d := Config{}.withDefaults()
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", d.Listen, "TCP address for laptop sessions")
	f.StringVar(&sidecarListen, "sidecar-listen", "", "TCP address for sidecar sessions, over TLS (--tls-cert, --tls-key); empty: sidecars come to --listen")
	f.StringVar(&tlsCert, "tls-cert", "", "the certificate sidecars pin, PEM")
	f.StringVar(&tlsKey, "tls-key", "", "its key, PEM")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", d.MetricsAddr, "TCP address for /metrics and /healthz")
	f.StringVar(&cfg.ResolvConf, "resolv-conf", d.ResolvConf, "resolv.conf naming the cluster's nameservers and search path")
	f.DurationVar(&cfg.DialTimeout, "dial-timeout", d.DialTimeout, "timeout of a TCP dial into the cluster")
	f.DurationVar(&cfg.UDPIdleTimeout, "udp-idle-timeout", d.UDPIdleTimeout, "a UDP flow without traffic for this long is closed")
	f.DurationVar(&cfg.HeaderTimeout, "header-timeout", d.HeaderTimeout, "a stream must send its header within this")
	f.DurationVar(&cfg.KeepAlive, "keepalive", d.KeepAlive, "session keepalive interval: how fast a vanished laptop is noticed")
	f.DurationVar(&cfg.DNSTimeout, "dns-timeout", d.DNSTimeout, "timeout of one DNS exchange with one nameserver")
	f.StringVar(&cfg.Reach, "reach", d.Reach, "what a laptop may dial: namespaces (pods and Services of namespaces where its user may create pods/portforward) or cluster")
	f.Var(prefixList{&cfg.AlsoReach}, "also-reach", "a CIDR outside the cluster every verified user may dial (repeatable)")
	f.StringSliceVar(&cfg.InterceptHeaders, "allow-header", DefaultInterceptHeaders, "a header name personal intercepts may match on; a trailing * makes it a prefix (repeatable)")
	f.IntVar(&cfg.MaxStreams, "max-streams", d.MaxStreams, "streams one session may have open at once")
	f.IntVar(&cfg.MaxDials, "max-dials", d.MaxDials, "dials one session may have in flight; more wait their turn")
	f.IntVar(&cfg.MaxStreamsTotal, "max-streams-total", d.MaxStreamsTotal, "streams all sessions may have open at once")
	f.IntVar(&wg.port, "wireguard-port", 0, "UDP port of the WireGuard path laptops' traffic takes instead of the port-forward; 0 for none")
	f.StringVar(&wg.service, "wireguard-service", "", "NAMESPACE/NAME of the Service that exposes --wireguard-port to laptops")
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return cmd
}

// run serves until ctx ends, in the pod it runs in.
// wgFlags are the WireGuard path's: its port and the Service exposing it.
type wgFlags struct {
	port    int
	service string
}

func run(ctx context.Context, logger *slog.Logger, cfg Config, sidecarListen, tlsCert, tlsKey string, wg wgFlags) error {
	if wg.port != 0 && !strings.Contains(wg.service, "/") {
		return fmt.Errorf("--wireguard-port needs --wireguard-service NAMESPACE/NAME, the Service laptops reach it by")
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return fmt.Errorf("load the in-cluster Kubernetes configuration (the manager runs in a pod): %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create a Kubernetes client: %w", err)
	}
	klog.SetSlogLogger(logger.With("subsystem", "client-go"))
	cfg = cfg.withDefaults()
	sessions, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen for sessions: %w", err)
	}
	lns := []net.Listener{sessions}
	if sidecarListen != "" {
		cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
		if err != nil {
			sessions.Close()
			return fmt.Errorf("load the manager's key for sidecars: %w", err)
		}
		sl, err := tls.Listen("tcp", sidecarListen, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		if err != nil {
			sessions.Close()
			return fmt.Errorf("listen for sidecars: %w", err)
		}
		lns = append(lns, sl)
	}
	metrics, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return fmt.Errorf("listen for metrics: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create a Kubernetes client: %w", err)
	}
	return serveCluster(ctx, logger, workload.Client{CS: client, Dyn: dyn}, cfg, lns, metrics, wg)
}

// serveCluster watches the cluster and serves sessions and metrics on the
// two listeners until ctx ends; it closes both.
func serveCluster(ctx context.Context, logger *slog.Logger, wc workload.Client, cfg Config, sessions []net.Listener, metrics net.Listener, wg wgFlags) error {
	defer func() {
		for _, ln := range sessions {
			ln.Close()
		}
	}()
	defer metrics.Close()
	client := wc.CS
	src, err := NewKubeSource(ctx, logger, client)
	if err != nil {
		return err
	}
	defer src.Close()
	m, err := New(logger, src, cfg)
	if err != nil {
		return err
	}
	m.identify = csrIdentifier(client)
	m.verifySidecar = podVerifier(wc)
	m.useAuthorizer(sarAuthorizer(client))
	m.reach.self = ownAddrs()
	if wg.port != 0 {
		ns, name, _ := strings.Cut(wg.service, "/")
		if err := m.useWireGuard(wg.port, serviceEndpoints(client, ns, name)); err != nil {
			return err
		}
		defer m.closeWireGuard()
	}

	hs := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second}
	metricsDone := make(chan error, 1)
	go func() { metricsDone <- hs.Serve(metrics) }()
	logger.Info("serving metrics", "addr", metrics.Addr().String())

	// Each listener serves until ctx ends; the first to fail ends all.
	sctx, stop := context.WithCancel(ctx)
	errs := make(chan error, len(sessions))
	for _, ln := range sessions {
		go func() {
			err := m.Serve(sctx, ln)
			stop()
			errs <- err
		}()
	}
	var serveErr error
	for range sessions {
		serveErr = errors.Join(serveErr, <-errs)
	}
	stop()

	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		hs.Close()
	}
	if err := <-metricsDone; serveErr == nil && !errors.Is(err, http.ErrServerClosed) {
		serveErr = fmt.Errorf("serve metrics: %w", err)
	}
	return serveErr
}

// prefixList is a repeatable CIDR flag.
type prefixList struct{ ps *[]netip.Prefix }

func (l prefixList) String() string {
	if l.ps == nil {
		return ""
	}
	var out []string
	for _, p := range *l.ps {
		out = append(out, p.String())
	}
	return strings.Join(out, ",")
}

func (l prefixList) Set(s string) error {
	for _, one := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(one))
		if err != nil {
			return fmt.Errorf("not a CIDR: %q", one)
		}
		*l.ps = append(*l.ps, p.Masked())
	}
	return nil
}

func (l prefixList) Type() string { return "CIDR" }
