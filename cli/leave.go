package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

func newLeave() *cobra.Command {
	var ns string
	cmd := &cobra.Command{
		Use:   "leave NAME",
		Short: "End an intercept: its traffic goes to the app again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeFn, err := daemonClient(cmd.Context())
			if errors.Is(err, errNoDaemon) {
				return errors.New("not connected to a cluster, so there is no intercept to leave")
			}
			if err != nil {
				return err
			}
			defer closeFn()
			if ns == "" {
				st, err := c.Status(cmd.Context(), &daemonpb.StatusRequest{})
				if err != nil {
					return errors.New(status.Convert(err).Message())
				}
				ns = st.Namespace
				for _, ic := range st.Intercepts { // ours, wherever they are
					if ic.GetSpec().GetName() == args[0] {
						ns = ic.GetSpec().GetNamespace()
					}
				}
			}
			if _, err := c.Leave(cmd.Context(), &daemonpb.LeaveRequest{Namespace: ns, Name: args[0]}); err != nil {
				return errors.New(status.Convert(err).Message())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Intercept %s ended.\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", "", "the intercept's namespace (default: found among yours, else the connected one)")
	return cmd
}
