package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/build"
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
		bf      buildFlags
	)
	cmd := &cobra.Command{
		Use:   "deploy DIR|FILE",
		Short: "Render manifest templates with parameters, apply them, and wait for every rollout",
		Long: "Render the *.yaml templates of DIR (or one FILE) with Go template syntax ({{ .image }}),\n" +
			"the defaults of values.yaml beside them and --set overrides; apply the objects with\n" +
			"server-side apply; wait for every Deployment to roll out, or fail with its pod's reason.\n" +
			"A bad template, a parameter no template names, or an object the API server refuses is\n" +
			"one error before anything is applied. --dry-run says what would change.\n\n" +
			"--build first builds the Go main packages values.yaml names (build: {image: ./cmd/shop})\n" +
			"into static binaries and images for the nodes' platforms, as ko does, pushes them to\n" +
			"--registry, and fills each parameter with its image by digest. The same source gives the\n" +
			"same digest: nothing is pushed again and nothing changes in the cluster.",
		Example: "  tunnel deploy ./manifests --set image=shop:1.4 --set replicas=3 -n shop\n" +
			"  tunnel deploy ./manifests --set image=shop:1.5 --dry-run\n" +
			"  tunnel deploy . --build --registry registry.example.com/team",
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
			var targets map[string]string
			if bf.on {
				var err error
				if targets, err = bf.targets(args[0], params); err != nil {
					return err
				}
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
			progress := func(s string) {
				if !output.json() {
					fmt.Fprintln(errOut, s+"...")
				}
			}
			var builds []build.Result
			if bf.on {
				warn := func(s string) { fmt.Fprintln(errOut, s) }
				if builds, err = bf.run(cmd.Context(), cs, args[0], targets, dryRun, progress, warn); err != nil {
					return err
				}
				for _, b := range builds {
					params[b.Param] = b.Image
				}
			}
			objs, err := deploy.Render(args[0], params)
			if err != nil {
				return err
			}
			results, err := deploy.Apply(cmd.Context(), rc, cs, objs, deploy.Options{
				Namespace: ns, DryRun: dryRun, Timeout: timeout, ForceConflicts: force, Progress: progress,
			})
			if output.json() && results != nil {
				if jerr := writeJSON(cmd.OutOrStdout(), map[string]any{"dry_run": dryRun, "builds": builds, "objects": results}); jerr != nil {
					return jerr
				}
			} else if !output.json() {
				for _, b := range builds { // pushed: said even when the apply then fails
					state := "pushed as " + b.Tag
					switch {
					case b.InRegistry:
						state = "in the registry already"
					case !b.Pushed:
						state = "would be pushed as " + b.Tag
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s = %s (%s, %s)\n", b.Param, b.Image, b.Package, state)
				}
			}
			if err == nil && !output.json() {
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
	bf.add(f)
	output.add(f)
	return cmd
}
