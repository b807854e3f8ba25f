package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/agent/manifest"
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
		output string
	)
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of this tunnel, its daemon, and the cluster's manager and agent image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" {
				return fmt.Errorf("unknown output format %q: use -o json or leave -o out", output)
			}
			v := readVersions(cmd.Context(), &kf)
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
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
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	return cmd
}

// readVersions asks the daemon, when one runs, and the cluster, when it
// answers; what cannot be read is left out, the reason in Problem.
func readVersions(ctx context.Context, kf *kubeFlags) versions {
	v := versions{CLI: version.Get()}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if c, closeFn, err := daemonClient(ctx); err == nil {
		if st, err := c.Status(ctx, nil); err == nil {
			v.Daemon, v.Manager = st.GetDaemonVersion(), st.GetManagerVersion()
		}
		closeFn()
	}
	_, cs, err := kf.client()
	if err != nil {
		v.Problem = "the cluster: " + err.Error()
		return v
	}
	d, err := cs.AppsV1().Deployments(manifest.Namespace).Get(ctx, manifest.Manager, metav1.GetOptions{})
	if err != nil {
		v.Problem = "the tunnel manager: " + err.Error()
		return v
	}
	pods, err := cs.CoreV1().Pods(manifest.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + manifest.Manager})
	if err != nil {
		v.Problem = "the tunnel manager's pods: " + err.Error()
		return v
	}
	r, err := manifest.RunningImage(d, pods.Items)
	if r.Tag == "" {
		v.Problem = err.Error()
		return v
	}
	if err != nil {
		v.Problem = err.Error()
	}
	v.Agent = &agentVersion{Image: r.Tag}
	if _, digest, ok := cutDigest(r.Image); ok {
		v.Agent.Digest = digest
	}
	if v.Manager == "" {
		v.Manager = d.Labels[manifest.VersionLabel]
	}
	if v.Manager != "" && v.Problem == "" {
		if err := version.Compatible(v.CLI.Version, v.Manager); err != nil {
			v.Problem = err.Error()
		}
	}
	return v
}

func cutDigest(ref string) (string, string, bool) {
	for i := len(ref) - 1; i >= 0; i-- {
		if ref[i] == '@' {
			return ref[:i], ref[i+1:], true
		}
	}
	return ref, "", false
}
