// Package agent is the in-cluster side of tunnel: the manager (the hub every
// session connects to) and the sidecar (captures an intercepted workload's
// inbound traffic). The command tree of `tunnel-agent` lives here.
package agent

import (
	"io"

	"github.com/spf13/cobra"

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
	return root
}
