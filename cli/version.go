package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/agent/manifest"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	"tunnel.dev/tunnel/version"
)

// versions is what `tunnel version` reports: every part's version, so a
// half-upgraded mix shows at a glance.
type versions struct {
	CLI     version.Info `json:"cli"`
	Daemon  string       `json:"daemon,omitempty"`  // the running daemon's, when one runs
	Manager string       `json:"manager,omitempty"` // the connected manager's, as it said in its hello
	// Agent is the image the cluster's manager runs.
	Agent *agentVersion `json:"agent,omitempty"`
	// Problem is why a part could not be read, or why two do not go together.
	Problem string `json:"problem,omitempty"`
}

// agentVersion is the image the manager's Deployment names, and the digest
// its ready pod pulled.
type agentVersion struct {
	Image  string `json:"image"`
	Digest string `json:"digest,omitempty"`
}

func newVersion() *cobra.Command {
	var (
		kf     kubeFlags
		output outputFlag
	)
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of this tunnel, its daemon, and the cluster's manager and agent image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output.check(); err != nil {
				return err
			}
			v := readVersions(cmd.Context(), &kf)
			if output.json() {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "tunnel %s\n", v.CLI)
			if v.Daemon != "" {
				fmt.Fprintf(w, "daemon %s\n", v.Daemon)
			}
			if v.Manager != "" {
				fmt.Fprintf(w, "manager %s\n", v.Manager)
			}
			if v.Agent != nil {
				fmt.Fprintf(w, "agent image %s", v.Agent.Image)
				if v.Agent.Digest != "" {
					fmt.Fprintf(w, " (%s)", v.Agent.Digest)
				}
				fmt.Fprintln(w)
			}
			if v.Problem != "" {
				fmt.Fprintln(w, v.Problem)
			}
			return nil
		},
	}
	kf.add(cmd)
	output.add(cmd.Flags())
	return cmd
}

// readVersions asks the daemon, when one runs, and the cluster, when it
// answers; what cannot be read is left out, the reason in Problem.
func readVersions(ctx context.Context, kf *kubeFlags) versions {
	v := versions{CLI: version.Get()}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if c, closeFn, err := daemonClient(ctx); err == nil {
		if st, err := c.Status(ctx, &daemonpb.StatusRequest{}); err == nil {
			v.Daemon, v.Manager = st.GetDaemonVersion(), st.GetManagerVersion()
		}
		closeFn()
	}
	if v.Daemon != "" && v.Daemon != v.CLI.Version {
		v.Problem = fmt.Sprintf("the daemon here runs %s, not this tunnel's %s: `tunnel quit`, then connect again", v.Daemon, v.CLI.Version)
	}
	_, cs, err := kf.client()
	if err != nil {
		return withProblem(v, "the cluster: "+err.Error())
	}
	r, err := manifest.ReadRunning(ctx, cs)
	if r.Tag == "" {
		return withProblem(v, err.Error())
	}
	if err != nil {
		v = withProblem(v, err.Error())
	}
	v.Agent = &agentVersion{Image: r.Tag, Digest: r.Digest}
	if v.Manager == "" {
		v.Manager = r.Version
	}
	if v.Manager != "" {
		if err := version.Compatible(v.CLI.Version, v.Manager); err != nil {
			v = withProblem(v, err.Error())
		}
	}
	return v
}

// withProblem adds a sentence to what v says is wrong.
func withProblem(v versions, problem string) versions {
	if v.Problem != "" {
		problem = v.Problem + "; " + problem
	}
	v.Problem = problem
	return v
}
