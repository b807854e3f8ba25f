package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/deploy"
)

func newDeploy() *cobra.Command {
	var (
		kf      kubeFlags
		sets    []string
		timeout time.Duration
		dryRun  bool
		force   bool
		output  outputFlag
	)
	cmd := &cobra.Command{
		Use:   "deploy DIR|FILE",
		Short: "Render manifest templates with parameters, apply them, and wait for every rollout",
		Long: "Render the *.yaml templates of DIR (or one FILE) with Go template syntax ({{ .image }}),\n" +
			"the defaults of values.yaml beside them and --set overrides; apply the objects with\n" +
			"server-side apply; wait for every Deployment to roll out, or fail with its pod's reason.\n" +
			"A bad template, a parameter no template names, or an object the API server refuses is\n" +
			"one error before anything is applied. --dry-run says what would change.",
		Example: "  tunnel deploy ./manifests --set image=shop:1.4 --set replicas=3 -n shop\n" +
			"  tunnel deploy ./manifests --set image=shop:1.5 --dry-run",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := output.check(); err != nil {
				return err
			}
			params := map[string]string{}
			for _, s := range sets {
				k, v, ok := strings.Cut(s, "=")
				if !ok || k == "" {
					return fmt.Errorf("--set %q: want KEY=VALUE", s)
				}
				params[k] = v
			}
			objs, err := deploy.Render(args[0], params)
			if err != nil {
				return err
			}
			rc, cs, err := kf.client()
			if err != nil {
				return err
			}
			ns, _, err := kf.clientConfig().Namespace()
			if err != nil {
				return err
			}
			errOut := cmd.ErrOrStderr()
			results, err := deploy.Apply(cmd.Context(), rc, cs, objs, deploy.Options{
				Namespace: ns, DryRun: dryRun, Timeout: timeout, ForceConflicts: force,
				Progress: func(s string) {
					if !output.json() {
						fmt.Fprintln(errOut, s+"...")
					}
				},
			})
			if output.json() && results != nil {
				if jerr := writeJSON(cmd.OutOrStdout(), map[string]any{"dry_run": dryRun, "objects": results}); jerr != nil {
					return jerr
				}
			} else if err == nil {
				for _, r := range results {
					verb := r.Action
					if dryRun {
						verb = "would be " + verb
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", r.Object, verb)
					for _, c := range r.Changes {
						fmt.Fprintf(cmd.OutOrStdout(), "    %s\n", c)
					}
				}
			}
			return err
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	f.StringArrayVar(&sets, "set", nil, "KEY=VALUE: a template parameter (repeatable)")
	f.DurationVar(&timeout, "timeout", 3*time.Minute, "how long each rollout may take")
	f.BoolVar(&dryRun, "dry-run", false, "say what would change, and change nothing")
	f.BoolVar(&force, "force-conflicts", false, "take fields another manager (kubectl, a controller) owns, instead of stopping")
	output.add(f)
	return cmd
}
