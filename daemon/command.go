package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

// defaultDNSAddr is where the laptop's resolver answers: an address of the
// benchmarking range (RFC 2544), which no real network routes, given to
// the TUN device as its own.
const defaultDNSAddr = "198.18.0.53:53"

// defaultMetricsAddr is on the loopback of the daemon's own network
// namespace: the laptop's, not the network's.
const defaultMetricsAddr = "127.0.0.1:9095"

// Command is `tunnel daemon`, which the CLI starts as root when none runs.
func Command() *cobra.Command {
	var (
		uid, gid, group int
		dnsAddr         string
		metricsAddr     string
		logFile         string
		repair          bool
		opt             = Options{Device: "tunnel0", ResolvConf: "/etc/resolv.conf"}
	)
	cmd := &cobra.Command{
		Use:    "daemon",
		Short:  "The privileged half of tunnel (started by `tunnel connect`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opt.RunDir = daemonpb.RunDir()
			if os.Getenv("TUNNEL_WIREGUARD_KEYLOG") == "1" {
				opt.WireGuardKeyLog = filepath.Join(opt.RunDir, "wireguard.keylog")
			}
			out := cmd.ErrOrStderr()
			if logFile != "" {
				f, err := openLog(opt.RunDir, logFile)
				if err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			logger := slog.New(slog.NewTextHandler(out, nil)).With("subsystem", "daemon")
			a, err := netip.ParseAddrPort(dnsAddr)
			if err != nil {
				return err
			}
			opt.DNSAddr = a
			if repair { // for `tunnel quit`: what it did, in sentences on stdout
				done, err := Repair(slog.New(slog.DiscardHandler), opt)
				for _, s := range done {
					fmt.Fprintln(cmd.OutOrStdout(), s)
				}
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Run(ctx, logger, opt, Caller{UID: uid, GID: gid}, group, metricsAddr)
		},
	}
	f := cmd.Flags()
	f.IntVar(&uid, "uid", os.Getuid(), "the user the daemon serves: owns the socket, runs the kubeconfig's credential plugins")
	f.IntVar(&gid, "gid", os.Getgid(), "that user's group")
	f.IntVar(&group, "group", -1, "a group whose members may also use the daemon")
	f.StringVar(&opt.Device, "device", opt.Device, "name of the TUN device")
	f.StringVar(&dnsAddr, "dns-addr", defaultDNSAddr, "address of the laptop's resolver, given to the TUN device")
	f.StringVar(&opt.ResolvConf, "resolv-conf", opt.ResolvConf, "the resolv.conf to point at the resolver")
	f.StringVar(&metricsAddr, "metrics-addr", defaultMetricsAddr, "where to serve Prometheus metrics (/metrics); empty for none")
	f.StringVar(&logFile, "log-file", "", "append the log here (0600), and what the process prints, instead of stderr")
	f.BoolVar(&repair, "repair", false, "only repair what a crashed daemon left, then exit")
	return cmd
}
