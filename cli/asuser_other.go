//go:build !unix

package cli

import (
	"errors"

	"github.com/spf13/cobra"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

// newAsUser: dropping to a user's uid is Unix's; elsewhere the daemon runs
// as the user's service and needs no such step.
func newAsUser() *cobra.Command {
	return &cobra.Command{
		Use:    daemonpb.AsUserVerb,
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.New(daemonpb.AsUserVerb + " is not supported on this OS")
		},
	}
}
