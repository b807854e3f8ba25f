package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/agent/manifest"
)

func newInstall() *cobra.Command {
	var (
		kf          kubeFlags
		agent       agentFlags
		users, grps []string
		timeout     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the tunnel manager in the cluster, and let users or groups connect",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opt, err := agent.install()
			if err != nil {
				return err
			}
			_, cs, err := kf.client()
			if err != nil {
				return err
			}
			opt.AllowUsers, opt.AllowGroups = users, grps
			fmt.Fprintln(cmd.ErrOrStderr(), "Installing the tunnel manager ("+opt.Image+") in namespace "+manifest.Namespace+"...")
			if err := manifest.Install(cmd.Context(), cs, opt, timeout); err != nil {
				if errors.Is(err, manifest.ErrForbidden) {
					return fmt.Errorf("you may not install the tunnel manager (%v): ask a cluster admin", err)
				}
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The tunnel manager is installed and ready.")
			return nil
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	agent.add(f)
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the manager may take to be ready")
	f.StringSliceVar(&users, "allow-user", nil, "let this user connect (repeatable)")
	f.StringSliceVar(&grps, "allow-group", nil, "let this group connect (repeatable)")
	return cmd
}

func newUninstall() *cobra.Command {
	var (
		kf        kubeFlags
		agents    []string
		allAgents bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove intercept sidecars (--agent, --all-agents), or everything tunnel installed in the cluster",
		Long: "Without flags: take the sidecar out of every workload that has one, then remove the manager.\n" +
			"--agent WORKLOAD (in -n NAMESPACE) or --all-agents (in every namespace): only the sidecars;\n" +
			"each Deployment and Service is left exactly as it was before the first intercept.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cs, err := kf.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			progress := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s+"...") }
			if len(agents) > 0 {
				ns, _, err := kf.clientConfig().Namespace()
				if err != nil {
					return err
				}
				for _, w := range agents {
					if err := inject.Remove(ctx, cs, ns, w, timeout, progress); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "The sidecar is out of %s/%s.\n", ns, w)
				}
				return nil
			}
			deps, err := inject.WithSidecar(ctx, cs, "")
			if err != nil {
				return err
			}
			for _, d := range deps {
				if err := inject.Remove(ctx, cs, d.Namespace, d.Name, timeout, progress); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "The sidecar is out of %s/%s.\n", d.Namespace, d.Name)
			}
			if allAgents {
				return nil
			}
			uctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if err := manifest.Uninstall(uctx, cs); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The tunnel manager is removed.")
			return nil
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	f.StringSliceVar(&agents, "agent", nil, "take the sidecar out of this Deployment only (repeatable)")
	f.BoolVar(&allAgents, "all-agents", false, "take the sidecar out of every Deployment, and leave the manager")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long each rollout may take")
	return cmd
}
