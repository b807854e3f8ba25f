package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

func newLeave() *cobra.Command {
	var ns string
	var all bool
	cmd := &cobra.Command{
		Use:   "leave NAME | --all",
		Short: "End an intercept (or with --all every one you hold): its traffic goes to the app again",
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case all && len(args) > 0:
				return errors.New("name an intercept or pass --all, not both")
			case !all && len(args) != 1:
				return errors.New("name the intercept to leave (tunnel list shows them), or pass --all")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeFn, err := daemonClient(cmd.Context())
			if errors.Is(err, errNoDaemon) {
				return errors.New("not connected to a cluster, so there is no intercept to leave")
			}
			if err != nil {
				return err
			}
			defer closeFn()
			st, err := c.Status(cmd.Context(), &daemonpb.StatusRequest{})
			if err != nil {
				return errors.New(status.Convert(err).Message())
			}
			if all {
				return leaveAll(cmd.Context(), c, st, cmd.OutOrStdout())
			}
			if ns == "" {
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
	cmd.Flags().BoolVar(&all, "all", false, "end every intercept your Kubernetes user holds from this machine (this session's, and any a crashed one left)")
	return cmd
}

// leaveAll ends this laptop's intercepts and every other one the manager
// lists under our Kubernetes user from this host (a session of ours that
// crashed), each said in a line. Not other hosts': a team that shares one
// kubeconfig is one user to the manager, and a teammate's laptop would
// only register its intercept again.
func leaveAll(ctx context.Context, c daemonpb.DaemonClient, st *daemonpb.StatusResponse, out io.Writer) error {
	host, _ := os.Hostname()
	type key struct{ ns, name string }
	var mine []key
	add := func(ic *managerpb.Intercept) {
		k := key{ic.GetSpec().GetNamespace(), ic.GetSpec().GetName()}
		if !slices.Contains(mine, k) {
			mine = append(mine, k)
		}
	}
	for _, ic := range st.Intercepts {
		add(ic)
	}
	if st.User != "" {
		resp, err := c.ListIntercepts(ctx, &daemonpb.ListInterceptsRequest{})
		if err != nil {
			return errors.New(status.Convert(err).Message())
		}
		for _, ic := range resp.GetIntercepts() {
			if ic.GetUser() == st.User && ic.GetHost() == host {
				add(ic)
			}
		}
	}
	if len(mine) == 0 {
		fmt.Fprintln(out, "You hold no intercepts.")
		return nil
	}
	var errs []error
	for _, k := range mine {
		if _, err := c.Leave(ctx, &daemonpb.LeaveRequest{Namespace: k.ns, Name: k.name}); err != nil {
			errs = append(errs, fmt.Errorf("intercept %s in %s: %s", k.name, k.ns, status.Convert(err).Message()))
			continue
		}
		fmt.Fprintf(out, "Intercept %s in namespace %s ended.\n", k.name, k.ns)
	}
	return errors.Join(errs...)
}
