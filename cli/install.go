package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/agent/manifest"
)

func newInstall() *cobra.Command {
	var (
		kf          kubeFlags
		opt         manifest.Options
		users, grps []string
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the tunnel manager in the cluster, and let users or groups connect",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cs, err := kf.client()
			if err != nil {
				return err
			}
			opt.AllowUsers, opt.AllowGroups = users, grps
			fmt.Fprintln(cmd.ErrOrStderr(), "Installing the tunnel manager in namespace "+manifest.Namespace+"...")
			if err := manifest.Install(cmd.Context(), cs, opt); err != nil {
				if errors.Is(err, manifest.ErrForbidden) {
					return fmt.Errorf("you may not install the tunnel manager (%v): ask a cluster admin", err)
				}
				return err
			}
			if err := manifest.WaitReady(cmd.Context(), cs, 2*time.Minute); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The tunnel manager is installed and ready.")
			return nil
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&opt.Image, "manager-image", manifest.DefaultImage, "the manager's image")
	f.StringSliceVar(&users, "allow-user", nil, "let this user connect (repeatable)")
	f.StringSliceVar(&grps, "allow-group", nil, "let this group connect (repeatable)")
	return cmd
}

func newUninstall() *cobra.Command {
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the tunnel manager and everything tunnel installed in the cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cs, err := kf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Minute)
			defer cancel()
			if err := manifest.Uninstall(ctx, cs); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The tunnel manager is removed.")
			return nil
		},
	}
	kf.add(cmd)
	return cmd
}
