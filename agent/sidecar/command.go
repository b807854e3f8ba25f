package sidecar

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/rpc"
)

// Command is `tunnel-agent sidecar`. The pod template sets its flags; the
// pod's own name, namespace and address come from the downward API through
// the environment.
func Command() *cobra.Command {
	var cfg Config
	var captures []string
	var podIP string
	var logLevel slog.Level
	cmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Capture an intercepted workload's inbound traffic",
		Long: "Listen on each capture port (the Service points there instead of at the app), and send\n" +
			"each connection or HTTP request to the laptop whose intercept takes it, or to the app.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, c := range captures {
				pc, err := ParseCapture(c)
				if err != nil {
					return err
				}
				cfg.Captures = append(cfg.Captures, pc)
			}
			ip, err := netip.ParseAddr(podIP)
			if err != nil {
				return fmt.Errorf("pod IP %q (set POD_IP from status.podIP): %w", podIP, err)
			}
			cfg.PodIP = ip
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			logger := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: logLevel}))
			return Run(ctx, logger.With("subsystem", "sidecar"), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Manager, "manager", "tunnel-manager.tunnel-system:8022", "the manager's session address")
	f.StringVar(&cfg.ManagerKey, "manager-key", "", "pin (sha256:HEX of its key) of the manager's TLS key; empty: plain TCP")
	f.StringVar(&cfg.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the workload's namespace (default $POD_NAMESPACE)")
	f.StringVar(&cfg.Workload, "workload", "", "the workload this sidecar serves: NAME for a Deployment, KIND/NAME otherwise")
	f.StringVar(&cfg.Pod, "pod", os.Getenv("POD_NAME"), "this pod's name (default $POD_NAME)")
	f.StringVar(&podIP, "pod-ip", os.Getenv("POD_IP"), "this pod's address, where the app listens (default $POD_IP)")
	f.StringArrayVar(&captures, "capture", nil, "LISTEN=APP: listen on LISTEN for traffic meant for the app's port APP (repeatable)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", ":9091", "address for /metrics and /healthz")
	f.StringVar(&cfg.DirectAddr, "direct-addr", fmt.Sprintf("127.0.0.1:%d", rpc.SidecarDirectPort), "where laptops' port-forwards open spare streams (empty: none)")
	f.StringVar(&cfg.TokenFile, "token-file", "/var/run/secrets/tunnel.dev/token", "the pod-bound ServiceAccount token (audience "+rpc.SidecarAudience+") shown to the manager")
	f.DurationVar(&cfg.Sniff, "sniff", 100*time.Millisecond, "how long to wait for a client's first bytes before relaying it as not HTTP")
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return cmd
}
