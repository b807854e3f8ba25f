// Package agent is the in-cluster side of tunnel: the manager (the hub every
// session connects to), the sidecar (captures an intercepted workload's
// inbound traffic) and a canary's standby driver. The command tree of `tunnel-agent` lives here.
package agent

import (
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/agent/canarydriver"
	"tunnel.dev/tunnel/agent/manager"
	"tunnel.dev/tunnel/agent/redirect"
	"tunnel.dev/tunnel/agent/sidecar"
	"tunnel.dev/tunnel/version"
)

// New returns the root command of tunnel-agent.
func New(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "tunnel-agent",
		Short:         "The in-cluster side of tunnel",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(version.Command("tunnel-agent"))
	root.AddCommand(manager.Command())
	root.AddCommand(sidecar.Command())
	root.AddCommand(redirect.Command())
	root.AddCommand(canarydriver.Command())
	root.AddCommand(&cobra.Command{
		Use:   "idle",
		Short: "Wait until stopped: what a replaced workload's containers run (tunnel intercept --replace)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			<-ctx.Done()
			return nil
		},
	})
	return root
}
