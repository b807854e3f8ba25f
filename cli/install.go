package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/mod/semver"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/version"
	"tunnel.dev/tunnel/workload"
)

// installFlags shape `tunnel install`.
type installFlags struct {
	kf             kubeFlags
	agent          agentFlags
	users, grps    []string
	timeout        time.Duration
	upgrade        bool
	agents, dryRun bool
	output         string
	reach          string
	alsoReach      []string
	allowHeaders   []string
	managerMemory  string
	sidecarMemory  string
	wireguard      string
	previewDomain  string
}

func newInstall() *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the tunnel manager in the cluster, let users or groups connect, or upgrade it",
		Long: "Installs the manager (namespace " + manifest.Namespace + ") with the agent image REGISTRY/tunnel-agent:VERSION,\n" +
			"VERSION this tunnel's own. On an install that exists, the settings it has (who may connect, registry,\n" +
			"pull secrets) stay unless flags change them; --upgrade moves the manager to this tunnel's version\n" +
			"while laptops stay connected, and --agents moves the sidecars too. --dry-run -o yaml prints what\n" +
			"would be applied, for GitOps.",
		Example: "  tunnel install --allow-user alice --registry registry.example.com/tools\n" +
			"  tunnel install --upgrade --agents\n" +
			"  tunnel install --dry-run -o yaml --image-pull-secret regcred > tunnel.yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd) },
	}
	f.kf.add(cmd)
	fl := cmd.Flags()
	f.agent.add(fl)
	fl.DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long the manager (and each sidecar's rollout) may take to be ready")
	fl.StringSliceVar(&f.users, "allow-user", nil, "let this user connect (repeatable)")
	fl.StringSliceVar(&f.grps, "allow-group", nil, "let this group connect (repeatable)")
	fl.StringVar(&f.reach, "reach", rpc.ReachNamespaces, "what a connected user may dial: namespaces (pods and Services where they may create pods/portforward) or cluster (any pod or Service)")
	fl.StringSliceVar(&f.alsoReach, "also-reach", nil, "a CIDR outside the cluster every connected user may dial, such as a database's subnet (repeatable)")
	fl.StringSliceVar(&f.allowHeaders, "allow-header", nil, "a header name personal intercepts may match on, besides x-tunnel-*; a trailing * makes a prefix, e.g. baggage (repeatable)")
	fl.StringVar(&f.managerMemory, "manager-memory", manifest.DefaultManagerMemory, "the manager's memory limit (its stream caps keep it within)")
	fl.StringVar(&f.sidecarMemory, "sidecar-memory", manifest.DefaultSidecarMemory, "each sidecar's memory limit, set at its next injection")
	fl.StringVar(&f.wireguard, "wireguard", manifest.WireGuardNodePort, "how laptops reach the manager's WireGuard path, the data path that does not cross the API server: nodeport (a node's address), loadbalancer (the cluster's load balancer) or off (every byte takes the port-forward)")
	fl.StringVar(&f.previewDomain, "preview-domain", "", "the domain preview URLs take host names under (intercept --preview gives NAME.DOMAIN); a wildcard DNS name that leads to the cluster's gateway")
	fl.BoolVar(&f.upgrade, "upgrade", false, "move the installed manager to this tunnel's version, keeping its settings")
	fl.BoolVar(&f.agents, "agents", false, "also move every sidecar to the manager's image (one rollout each)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "change nothing: print what would be applied (-o yaml)")
	fl.StringVarP(&f.output, "output", "o", "", "output format with --dry-run: yaml")
	return cmd
}

func (f *installFlags) run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	if f.output != "" && f.output != "yaml" {
		return fmt.Errorf("unknown output format %q: install prints -o yaml", f.output)
	}
	if f.output != "" && !f.dryRun {
		return errors.New("-o yaml goes with --dry-run: an install prints no objects")
	}
	var (
		cs      kubernetes.Interface
		current *manifest.Options
	)
	// A plain dry run needs no cluster: it prints what these flags install.
	if !f.dryRun || f.upgrade {
		_, c, err := f.kf.client()
		if err != nil {
			return err
		}
		cs = c
		if current, err = manifest.Current(ctx, cs); err != nil {
			return err
		}
	}
	if f.upgrade && current == nil {
		return errors.New("there is no tunnel manager to upgrade in this cluster: run `tunnel install`")
	}
	opt, err := f.options(cmd, current)
	if err != nil {
		return err
	}
	if f.dryRun {
		out, err := manifest.YAML(opt)
		if err != nil {
			return err
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	}
	if current != nil && current.Image != opt.Image {
		if !f.upgrade {
			return fmt.Errorf("the tunnel manager is installed with %s: run `tunnel install --upgrade` to move it to %s, keeping its settings", current.Image, opt.Image)
		}
		if older(opt.Version, current.Version) {
			return fmt.Errorf("the tunnel manager (%s) is newer than this tunnel (%s): upgrade with a tunnel of %s or later", current.Version, opt.Version, current.Version)
		}
	}
	errOut := cmd.ErrOrStderr()
	if current != nil && current.Image != opt.Image {
		fmt.Fprintf(errOut, "Moving the tunnel manager from %s to %s...\n", current.Image, opt.Image)
	} else {
		fmt.Fprintln(errOut, "Installing the tunnel manager ("+opt.Image+") in namespace "+manifest.Namespace+"...")
	}
	if err := manifest.Install(ctx, cs, opt, f.timeout); err != nil {
		if errors.Is(err, manifest.ErrForbidden) {
			return fmt.Errorf("you may not install the tunnel manager (%v): ask a cluster admin", err)
		}
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), "The tunnel manager is installed and ready ("+opt.Image+").")
	moved := current != nil && current.Image != opt.Image
	if !f.agents && moved && current.Version != "" && version.Compatible(current.Version, opt.Version) != nil {
		// The new manager would not serve the old sidecars: their
		// intercepts would quietly go to the app. They move too.
		fmt.Fprintf(errOut, "The new manager does not serve sidecars of %s: moving them too.\n", current.Version)
		f.agents = true
	}
	wc, err := f.kf.workloads()
	if err != nil {
		return err
	}
	if f.agents {
		return upgradeSidecars(ctx, cmd, wc, f.timeout)
	}
	if moved {
		if deps, err := inject.WithSidecar(ctx, wc, ""); err == nil && len(deps) > 0 {
			fmt.Fprintf(errOut, "%d workloads keep sidecars of the older agent, which work on; `tunnel install --upgrade --agents` moves them now, or each moves at its next intercept.\n", len(deps))
		}
	}
	return nil
}

// options are the install's settings: flags first, then what the install
// in the cluster has, then the defaults.
func (f *installFlags) options(cmd *cobra.Command, current *manifest.Options) (manifest.Options, error) {
	a := f.agent
	if current != nil {
		if a.registry == "" && a.image == "" {
			a.registry = manifest.RegistryOf(current.Image) // "" when it is not REGISTRY/tunnel-agent
		}
		if !cmd.Flags().Changed("image-pull-secret") {
			a.pullSecrets = current.PullSecrets
		}
	}
	opt, err := a.install()
	if err != nil {
		return opt, err
	}
	opt.AllowUsers, opt.AllowGroups = f.users, f.grps
	if _, err := rpc.ParseReach(f.reach); err != nil {
		return opt, err
	}
	for _, c := range f.alsoReach {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return opt, fmt.Errorf("--also-reach %q is not a CIDR such as 10.20.0.0/16", c)
		}
		if p.Bits() < 8 {
			return opt, fmt.Errorf("--also-reach %s is wider than a /8: name the networks the users need", c)
		}
		opt.AlsoReach = append(opt.AlsoReach, p.Masked().String())
	}
	opt.Reach = f.reach
	for _, h := range f.allowHeaders {
		name := strings.TrimSuffix(h, "*")
		if name == "" || strings.ContainsAny(name, " :\t=*") {
			return opt, fmt.Errorf("--allow-header %q: want a header name such as baggage, or a prefix such as x-team-*", h)
		}
		switch strings.ToLower(name) {
		case "cookie", "authorization", "user-agent", "host", "accept", "content-type":
			return opt, fmt.Errorf("--allow-header %s: every client sends it, so an intercept on it would take teammates' traffic", h)
		}
	}
	for flag, q := range map[string]string{"--manager-memory": f.managerMemory, "--sidecar-memory": f.sidecarMemory} {
		if v, err := resource.ParseQuantity(q); err != nil || v.Cmp(resource.MustParse("64Mi")) < 0 {
			return opt, fmt.Errorf("%s %q: want a memory size of 64Mi or more, such as 512Mi or 2Gi", flag, q)
		}
	}
	opt.ManagerMemory, opt.SidecarMemory = f.managerMemory, f.sidecarMemory
	if opt.WireGuard, err = manifest.ParseWireGuard(f.wireguard); err != nil {
		return opt, err
	}
	if d := strings.Trim(strings.ToLower(f.previewDomain), "."); d != "" {
		if errs := validation.IsDNS1123Subdomain(d); len(errs) > 0 {
			return opt, fmt.Errorf("--preview-domain %q is not a DNS name: %s", f.previewDomain, errs[0])
		}
		opt.PreviewDomain = d
	}
	if len(f.allowHeaders) > 0 {
		opt.AllowHeaders = append([]string{"x-tunnel-*"}, f.allowHeaders...)
	}
	if current != nil {
		if !cmd.Flags().Changed("reach") && current.Reach != "" {
			opt.Reach = current.Reach
		}
		if !cmd.Flags().Changed("also-reach") {
			opt.AlsoReach = current.AlsoReach
		}
		if !cmd.Flags().Changed("allow-header") {
			opt.AllowHeaders = current.AllowHeaders
		}
		if len(current.TLSCert) > 0 && len(current.TLSKey) > 0 {
			opt.TLSCert, opt.TLSKey = current.TLSCert, current.TLSKey
		}
		if !cmd.Flags().Changed("manager-memory") && current.ManagerMemory != "" {
			opt.ManagerMemory = current.ManagerMemory
		}
		if !cmd.Flags().Changed("sidecar-memory") && current.SidecarMemory != "" {
			opt.SidecarMemory = current.SidecarMemory
		}
		if !cmd.Flags().Changed("wireguard") && current.WireGuard != "" {
			opt.WireGuard = current.WireGuard
		}
		if !cmd.Flags().Changed("preview-domain") {
			opt.PreviewDomain = current.PreviewDomain
		}
		opt.Replicas = current.Replicas
		// Install adds to who may connect; the printed objects say all.
		opt.AllowUsers = union(current.AllowUsers, f.users)
		opt.AllowGroups = union(current.AllowGroups, f.grps)
	}
	return opt, nil
}

// older says whether version a's release is older than b's: a build past
// a tag (v1.6.0-3-gabc, as git describe says) counts as that tag's.
// Development builds are never older (nothing can be said of them).
func older(a, b string) bool {
	release := func(v string) string { r, _, _ := strings.Cut(semver.Canonical(v), "-"); return r }
	return semver.IsValid(a) && semver.IsValid(b) && semver.Compare(release(a), release(b)) < 0
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// upgradeSidecars moves every sidecar to the image the manager runs now,
// by digest, one workload at a time.
func upgradeSidecars(ctx context.Context, cmd *cobra.Command, wc workload.Client, timeout time.Duration) error {
	cs := wc.CS
	agent, err := sidecarAgent(ctx, cs)
	if err != nil {
		return err
	}
	deps, err := inject.WithSidecar(ctx, wc, "")
	if err != nil {
		return err
	}
	progress := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s+"...") }
	// One workload that cannot move does not keep the others back.
	var failed []error
	for i := range deps {
		err := inject.CheckPullSecrets(ctx, cs, deps[i].Namespace, agent)
		if err == nil {
			err = inject.Upgrade(ctx, wc, deps[i], agent, timeout, progress)
		}
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d sidecars did not move to %s (the others did): %w", len(failed), len(deps), agent.Image, errors.Join(failed...))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Every sidecar runs %s.\n", agent.Image)
	return nil
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
			"each workload and Service is left exactly as it was before the first intercept.\n" +
			"A WORKLOAD is NAME, or KIND/NAME (statefulset/web) when several kinds have that name.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			wc, err := kf.workloads()
			if err != nil {
				return err
			}
			cs := wc.CS
			ctx := cmd.Context()
			progress := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s+"...") }
			if len(agents) > 0 {
				ns, _, err := kf.clientConfig().Namespace()
				if err != nil {
					return err
				}
				for _, name := range agents {
					r, err := sidecarRef(ctx, wc, ns, name)
					if err != nil {
						return err
					}
					if err := inject.Remove(ctx, wc, ns, r, timeout, progress); err != nil {
						return err
					}
					if workload.IsBatch(r.Kind) { // it never has a sidecar; a replace suspended it
						fmt.Fprintf(cmd.OutOrStdout(), "Nothing of tunnel's is left in %s.\n", r.Describe(ns))
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "The sidecar is out of %s.\n", r.Describe(ns))
				}
				return nil
			}
			// Jobs and CronJobs an intercept suspended (--replace) carry
			// no sidecar: they are found by the mark of the replace.
			// Best effort: one that cannot be resumed is said, and the rest
			// of the uninstall goes on.
			batch, err := wc.ListBatch(ctx, "", inject.ReplacedAnnot)
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "Warning: could not look for Jobs and CronJobs an intercept suspended: %v\n", err)
			}
			for _, b := range batch {
				back, err := inject.Restore(ctx, wc, b.Namespace, b.Ref, "", "", timeout, progress)
				switch {
				case err != nil:
					fmt.Fprintf(cmd.ErrOrStderr(), "Warning: %s stays suspended: %v; `tunnel uninstall --agent %s -n %s` tries again\n", b.Describe(), err, b.Ref, b.Namespace)
				case back:
					fmt.Fprintf(cmd.OutOrStdout(), "Resumed %s, which an intercept had suspended.\n", b.Describe())
				}
			}
			deps, err := inject.WithSidecar(ctx, wc, "")
			if err != nil {
				return err
			}
			for _, d := range deps {
				if err := inject.Remove(ctx, wc, d.Namespace, d.Ref, timeout, progress); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "The sidecar is out of %s.\n", d.Describe())
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

// sidecarRef finds which workload --agent names: KIND/NAME as it says; a
// bare NAME, the one workload of that name with a sidecar, else the one
// the Services tunnel changed name (the workload itself may be gone, its
// Services still to put back), else a Deployment.
func sidecarRef(ctx context.Context, wc workload.Client, ns, name string) (workload.Ref, error) {
	if strings.Contains(name, "/") {
		return workload.ParseRef(name)
	}
	with, err := inject.WithSidecar(ctx, wc, ns)
	if err != nil {
		return workload.Ref{}, err
	}
	var refs []workload.Ref
	for _, w := range with {
		if w.Name == name {
			refs = append(refs, w.Ref)
		}
	}
	if len(refs) == 0 {
		// The workload may be gone: its Services still name it.
		svcs, err := wc.CS.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return workload.Ref{}, fmt.Errorf("list services in namespace %s: %w", ns, err)
		}
		seen := map[workload.Ref]bool{}
		for _, svc := range svcs.Items {
			if r, err := workload.ParseRef(svc.Annotations[inject.WorkloadAnnot]); err == nil && r.Name == name && !seen[r] {
				seen[r] = true
				refs = append(refs, r)
			}
		}
	}
	switch len(refs) {
	case 0:
		// No sidecar under that name: a workload of it (or the one behind
		// a Service of it) has none to take out; a name of nothing is an
		// error, not "the sidecar is out".
		w, _, err := wc.Find(ctx, ns, name)
		if err != nil {
			return workload.Ref{}, err
		}
		return w.Ref, nil
	case 1:
		return refs[0], nil
	}
	return workload.Ref{}, fmt.Errorf("%s and %s are both named %s and carry the sidecar; say which, as KIND/NAME", refs[0].Describe(ns), refs[1].Describe(ns), name)
}
