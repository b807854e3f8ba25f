// Package cli is the `tunnel` command tree: one file per verb. Verbs talk
// to the daemon over its gRPC API only; nothing here touches the network
// configuration of the machine.
package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// New returns the root command writing to out and errOut.
func New(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "tunnel",
		Short:         "Make this machine part of a Kubernetes cluster's network, and the cluster's traffic part of it",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(newVersion(), newConnect(), newStatus(), newQuit(),
		newIntercept(), newLeave(), newList(), newDeploy(), newCanary(), newInstall(), newUninstall(), newAsUser())
	return root
}
