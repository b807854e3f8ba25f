package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/agent/manifest"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	"tunnel.dev/tunnel/tun"
)

func newConnect() *cobra.Command {
	var (
		kf                      kubeFlags
		also, never, dnsInclude []string
		agent                   agentFlags
		output                  outputFlag
		wireguard               bool
		wgEndpoint              string
	)
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Join this machine to the cluster's network: its pods and Services by address and by name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			// Mistakes in flags are told before anything starts.
			if err := output.check(); err != nil {
				return err
			}
			if _, err := tun.ParsePrefixes("--also-proxy", also); err != nil {
				return err
			}
			if _, err := tun.ParsePrefixes("--never-proxy", never); err != nil {
				return err
			}
			if wgEndpoint != "" {
				if _, port, err := net.SplitHostPort(wgEndpoint); err != nil || port == "" {
					return fmt.Errorf("--wireguard-endpoint %q: want HOST:PORT, the manager's WireGuard address as this laptop reaches it", wgEndpoint)
				}
			}
			st, err := connect(ctx, cmd, &kf, connectOptions{also: also, never: never, dnsInclude: dnsInclude, agent: agent, quiet: output.json(),
				noWireGuard: !wireguard, wgEndpoint: wgEndpoint})
			if err != nil {
				return err
			}
			if output.json() {
				return printJSON(cmd.OutOrStdout(), st)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Connected to %s (context %s, namespace %s).\n", st.Cluster, st.Context, st.Namespace)
			return nil
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	f.StringSliceVar(&also, "also-proxy", nil, "also route this CIDR through the cluster (repeatable)")
	f.StringSliceVar(&never, "never-proxy", nil, "never route this CIDR through the cluster, even if it is the cluster's (repeatable)")
	f.StringSliceVar(&dnsInclude, "dns-include", nil, "also resolve names ending in this suffix in the cluster (repeatable)")
	f.BoolVar(&wireguard, "wireguard", true, "carry new connections over WireGuard (UDP to the manager, off the API server) while it answers; false: always the port-forward")
	f.StringVar(&wgEndpoint, "wireguard-endpoint", "", "HOST:PORT where this laptop reaches the manager's WireGuard port, when a VPN or firewall decides it (default: the addresses the manager names)")
	agent.add(f)
	output.add(f)
	return cmd
}

type connectOptions struct {
	also, never, dnsInclude []string
	agent                   agentFlags
	quiet                   bool
	noWireGuard             bool
	wgEndpoint              string
}

// connect joins this machine to the cluster kf names, starting the daemon
// and installing the manager when needed; intercept uses it too when no
// connection exists yet.
func connect(ctx context.Context, cmd *cobra.Command, kf *kubeFlags, o connectOptions) (*daemonpb.StatusResponse, error) {
	kubeconfig, kctx, ns, err := kf.portable()
	if err != nil {
		return nil, err
	}
	if err := ensureManager(ctx, cmd, kf, o.agent, o.quiet); err != nil {
		return nil, err
	}
	c, closeFn, err := daemonClient(ctx)
	if errors.Is(err, errNoDaemon) {
		c, closeFn, err = startDaemon(ctx, cmd.ErrOrStderr())
	}
	if err != nil {
		return nil, err
	}
	defer closeFn()
	st, err := c.Connect(ctx, &daemonpb.ConnectRequest{
		Kubeconfig: kubeconfig, Context: kctx, Namespace: ns, ManagerNamespace: manifest.Namespace,
		AlsoProxy: o.also, NeverProxy: o.never, DnsInclude: o.dnsInclude,
		NoWireguard: o.noWireGuard, WireguardEndpoint: o.wgEndpoint,
	})
	if err != nil {
		return nil, errors.New(status.Convert(err).Message())
	}
	for _, r := range st.GetRepaired() {
		fmt.Fprintln(cmd.ErrOrStderr(), r)
	}
	return st, nil
}

// ensureManager installs the manager on first connect when the user may,
// and otherwise says who must.
func ensureManager(ctx context.Context, cmd *cobra.Command, kf *kubeFlags, agent agentFlags, quiet bool) error {
	_, cs, err := kf.client()
	if err != nil {
		return err
	}
	ictx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ok, err := manifest.Installed(ictx, cs)
	if errors.Is(err, manifest.ErrForbidden) {
		return errors.New("you may not use the tunnel manager in this cluster: ask an admin to run `tunnel install --allow-user <you>`")
	}
	if err != nil {
		return fmt.Errorf("cannot reach the cluster at %s: %w", cs.RESTClient().Get().URL().Host, err)
	}
	if ok {
		return nil
	}
	if err := manifest.CheckAccess(ictx, cs, "create"); err != nil {
		if errors.Is(err, manifest.ErrForbidden) {
			return errors.New("the tunnel manager is not installed in this cluster and you may not install it: ask an admin to run `tunnel install --allow-user <you>`")
		}
		return err
	}
	opt, err := agent.install()
	if err != nil {
		return err
	}
	if !quiet {
		fmt.Fprintln(cmd.ErrOrStderr(), "Installing the tunnel manager ("+opt.Image+") in namespace "+manifest.Namespace+"...")
	}
	// Installed only to connect: a manager that cannot start goes again.
	return manifest.Install(ctx, cs, opt, 2*time.Minute)
}
