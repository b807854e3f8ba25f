package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/canary"
)

func newCanary() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "canary",
		Short: "Send a share of a Service's traffic to a new image through the gateway; promote or roll back by its metrics",
		Long: "A canary runs the new image beside the stable Deployment, sends each step's share of the\n" +
			"Service's traffic to it through the gateway's route (a Gateway API HTTPRoute or an Emissary\n" +
			"Mapping), and after each interval asks Prometheus for its error rate and p99. Healthy: the\n" +
			"next step, and after the last the stable Deployment takes the image. Past a threshold: all\n" +
			"traffic back to stable and the canary removed. Nothing runs in the cluster: the CLI drives\n" +
			"it, its record is the ConfigMap tunnel-canary-SERVICE, and `resume` picks it up again.",
	}
	cmd.AddCommand(newCanaryStart(), newCanaryStatus(), newCanaryAct("promote"), newCanaryAct("abort"), newCanaryResume(), newCanaryReport())
	return cmd
}

// canaryClients are what every canary verb needs.
type canaryClients struct {
	cs     kubernetes.Interface
	runner *canary.Runner
	store  canary.Store
	leases canary.Leases
}

func (k *kubeFlags) canaryClients(cmd *cobra.Command) (*canaryClients, error) {
	rc, cs, err := k.client()
	if err != nil {
		return nil, err
	}
	ns, _, err := k.clientConfig().Namespace()
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	store, leases := canary.Store{CS: cs, Namespace: ns}, canary.Leases{CS: cs, Namespace: ns}
	errOut := cmd.ErrOrStderr()
	return &canaryClients{cs: cs, store: store, leases: leases, runner: &canary.Runner{
		Store: store, Leases: leases, Work: canary.Workloads{CS: cs, Namespace: ns}, Dyn: dyn,
		// Every driver removes the standby when it ends the canary.
		Standby: &canary.Standby{CS: cs, Namespace: ns},
		Me:      canary.Me(whoAmI(cmd.Context(), cs)),
		Progress: func(s string) {
			fmt.Fprintf(errOut, "%s %s\n", time.Now().Format(time.TimeOnly), s)
		},
	}}, nil
}

// finished says how a canary that was driven here ended.
func (c *canaryClients) finished(cmd *cobra.Command, service string, err error) error {
	if err != nil {
		return err
	}
	if st, gerr := c.store.Get(cmd.Context(), service); gerr == nil {
		fmt.Fprintf(cmd.OutOrStdout(), "The canary of %s is %s: %s runs %s.\n", service, strings.ToLower(string(st.Phase)), st.Stable, st.Spec.Image)
	}
	return nil
}

// whoAmI is the Kubernetes user the credentials stand for.
func whoAmI(ctx context.Context, cs kubernetes.Interface) string {
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r.Status.UserInfo.Username == "" {
		return os.Getenv("USER")
	}
	return r.Status.UserInfo.Username
}

// driving runs fn, which drives a canary, until it ends or Ctrl-C (or
// SIGTERM) ends its context: the canary then stays where it is, for resume.
func (k *kubeFlags) driving(cmd *cobra.Command, fn func(context.Context, *canaryClients) error) error {
	c, err := k.canaryClients(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	return fn(ctx, c)
}

func newCanaryStart() *cobra.Command {
	var (
		kf       kubeFlags
		spec     canary.Spec
		steps    string
		interval time.Duration
		maxP99   time.Duration
		maxErr   string
		buildDir string
		bf       buildFlags
		checks   []string
		driver   string
		drvImage string
	)
	cmd := &cobra.Command{
		Use:   "start SERVICE --image IMAGE | --build DIR",
		Short: "Start a canary of SERVICE's Deployment with IMAGE and drive it to promotion or rollback",
		Example: "  tunnel canary start shop --image shop:1.5 --prometheus http://prometheus.monitoring:9090\n" +
			"  tunnel canary start shop --image shop:1.5 --steps 10,50,100 --interval 1m --max-p99 300ms\n" +
			"  tunnel canary start shop --build ./deploy --registry registry.example.com/team\n" +
			"  tunnel canary start shop --image shop:1.5 --match header:x-beta=1 --steps match,10,50,100\n" +
			"  tunnel canary start shop --image shop:1.5 --match 'cookie:beta=~(1|yes)'\n" +
			"  tunnel canary start shop --image shop:1.5 --check 'conversion: sum(rate(orders_total{result=\"ok\",{{canary_pods}}}[{{interval}}])) / sum(rate(orders_total{{canary_pods}}[{{interval}}])) >= 0.95 * sum(rate(orders_total{result=\"ok\",{{stable_pods}}}[{{interval}}])) / sum(rate(orders_total{{stable_pods}}[{{interval}}]))'",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Service = args[0]
			switch {
			case spec.Image != "" && buildDir != "":
				return fmt.Errorf("--image and --build both name the canary's image: give one")
			case spec.Image == "" && buildDir == "":
				return fmt.Errorf("name the new image with --image, or build it from source with --build DIR")
			}
			var err error
			if spec.Match != "" && !cmd.Flags().Changed("steps") {
				steps = "match" // a dark launch, then straight to stable
			}
			if spec.Steps, err = canary.ParseSteps(steps); err != nil {
				return err
			}
			if spec.MaxErrorRate, err = parseRate(maxErr); err != nil {
				return err
			}
			for _, s := range checks {
				c, err := canary.ParseCheck(s)
				if err != nil {
					return err
				}
				spec.Custom = append(spec.Custom, c)
			}
			if interval <= 0 || spec.Timeout <= 0 {
				return fmt.Errorf("--interval and --timeout must be positive")
			}
			if spec.MinRequests < 1 || spec.MaxIdle < 1 {
				return fmt.Errorf("--min-requests and --max-idle must be at least 1")
			}
			if spec.Prometheus == "" {
				spec.Prometheus = os.Getenv("TUNNEL_PROMETHEUS")
			}
			if spec.Prometheus == "" {
				return fmt.Errorf("name the Prometheus that scrapes the gateway with --prometheus URL (or TUNNEL_PROMETHEUS)")
			}
			spec.Interval, spec.MaxP99 = canary.Duration(interval), canary.Duration(maxP99)
			if driver != "auto" && driver != "cluster" && driver != "laptop" {
				return fmt.Errorf("--driver %s: want auto, cluster (a standby in the cluster finishes the canary if this CLI stops) or laptop", driver)
			}
			return kf.driving(cmd, func(ctx context.Context, c *canaryClients) error {
				c.runner.Standby.Required = driver == "cluster"
				if driver != "laptop" {
					c.runner.Standby.Image, c.runner.Standby.PullSecrets, err = standbyImage(ctx, c.cs, c.store.Namespace, drvImage)
					switch {
					case err != nil && driver == "cluster":
						return err
					case err != nil:
						c.runner.Progress(fmt.Sprintf("Driven from this CLI only (%v)", err))
					}
				}
				if buildDir != "" {
					progress := func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s+"...") }
					if spec.Image, err = bf.image(ctx, c.cs, buildDir, progress); err != nil {
						return err
					}
				}
				return c.finished(cmd, spec.Service, c.runner.Start(ctx, spec))
			})
		},
	}
	kf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&spec.Image, "image", "", "the image to try")
	f.StringVar(&buildDir, "build", "", "build the image to try from source: the folder whose values.yaml names one Go main package (build: {image: ./cmd/shop})")
	bf.addWhere(f)
	f.StringVar(&spec.Container, "container", "", "the container that takes the image (default: the first)")
	f.StringVar(&steps, "steps", "5,25,50,100", "the canary's share of traffic at each step, in percent; \"match\" first for a step of the matching requests alone (default with --match: match, promoted after one healthy interval of the matching requests alone)")
	f.StringVar(&spec.Match, "match", "", "a dark launch: requests with this header or cookie go to the canary at every step (header:NAME=VALUE, cookie:NAME=VALUE, =~ for a regular expression of the whole value)")
	f.DurationVar(&interval, "interval", 30*time.Second, "how long each step runs before it is judged")
	f.StringVar(&maxErr, "max-error-rate", "1%", "the highest share of 5xx answers the canary may give")
	f.DurationVar(&maxP99, "max-p99", 500*time.Millisecond, "the highest p99 latency the canary may have (0: not judged)")
	f.StringVar(&driver, "driver", "auto", "what finishes the canary if this CLI stops: cluster (a Job in the namespace, with a Role of only the canary's objects, takes over when this CLI's lease lapses), laptop (only `resume`), or auto (cluster when you may make that Job and its Role, else laptop)")
	f.StringVar(&drvImage, "driver-image", "", "the image of the driver in the cluster (default: the installed manager's, which has it)")
	f.StringArrayVar(&checks, "check", nil, "judge the canary by the hypothesis's own metric as well, 'NAME: PROMQL OP VALUE' (repeatable); "+
		"{{canary}}/{{stable}} are the gateway's label matchers for each, {{canary_pods}}/{{stable_pods}} their pods', {{interval}} the step's")
	f.IntVar(&spec.MinRequests, "min-requests", 20, "requests the canary must get in an interval to be judged")
	f.IntVar(&spec.MaxIdle, "max-idle", 3, "intervals in a row with too few requests before rolling back")
	f.StringVar(&spec.Prometheus, "prometheus", "", "the URL of the Prometheus that scrapes the gateway (default: $TUNNEL_PROMETHEUS)")
	f.StringVar(&spec.Route, "route", "", "what steers traffic: httproute/NAME or mapping/NAME (default: the one that sends to SERVICE)")
	f.StringVar(&spec.Metrics, "metrics", "", "the gateway's metric names: traefik or emissary (default: by the route's kind)")
	f.DurationVar(&spec.Timeout, "timeout", 3*time.Minute, "how long a rollout (the canary's, or the stable's on promotion) may take")
	return cmd
}

// parseRate reads "1%", "0.5%" or "0.01".
func parseRate(s string) (float64, error) {
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if pct {
		v /= 100
	}
	if err != nil || v < 0 || v > 1 {
		return 0, fmt.Errorf("--max-error-rate %s: want a percentage such as 1%% or 0.5%%", s)
	}
	return v, nil
}

func newCanaryStatus() *cobra.Command {
	var (
		kf     kubeFlags
		output outputFlag
		watch  bool
	)
	cmd := &cobra.Command{
		Use:   "status [SERVICE]",
		Short: "Show a canary (or every canary in the namespace): its step, its driver and its last check",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := output.check(); err != nil {
				return err
			}
			if watch && (len(args) != 1 || output.json()) {
				return fmt.Errorf("--watch follows one canary, as text: name its service, without -o json")
			}
			c, err := kf.canaryClients(cmd)
			if err != nil {
				return err
			}
			if watch {
				ctx, cancel := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer cancel()
				return watchCanary(ctx, cmd.OutOrStdout(), c.store, c.leases, args[0])
			}
			var states []*canary.State
			if len(args) == 1 {
				st, err := c.store.Get(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				states = append(states, st)
			} else if states, err = c.store.List(cmd.Context()); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output.json() {
				if len(args) == 1 {
					return writeJSON(out, states[0])
				}
				return writeJSON(out, states)
			}
			if len(states) == 0 {
				fmt.Fprintf(out, "No canaries in namespace %s.\n", c.store.Namespace)
			}
			for _, st := range states {
				holder, err := c.leases.Holder(cmd.Context(), st.Spec.Service)
				if err != nil {
					return err
				}
				canary.Describe(out, st, holder, time.Now())
			}
			return nil
		},
	}
	kf.add(cmd)
	output.add(cmd.Flags())
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "follow the canary until it ends, redrawn in place (one line per change when not a terminal); exits 0 when promoted")
	return cmd
}

func newCanaryAct(action string) *cobra.Command {
	var kf kubeFlags
	short := map[string]string{
		"promote": "Promote a canary now: the stable Deployment takes its image, and the canary goes",
		"abort":   "Abort a canary: all traffic back to stable, and the canary goes",
	}[action]
	cmd := &cobra.Command{
		Use:   action + " SERVICE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return kf.driving(cmd, func(ctx context.Context, c *canaryClients) error {
				st, err := c.runner.Ask(ctx, args[0], action)
				if action == "abort" && st != nil && st.Phase == canary.Aborted {
					fmt.Fprintf(cmd.OutOrStdout(), "The canary of %s is aborted: all traffic goes to %s.\n", args[0], st.Stable)
					return nil
				}
				if err == nil && st != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "The canary of %s is %s: %s.\n", args[0], strings.ToLower(string(st.Phase)), st.Reason)
				}
				return err
			})
		},
	}
	kf.add(cmd)
	return cmd
}

func newCanaryResume() *cobra.Command {
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "resume SERVICE",
		Short: "Drive a canary whose CLI stopped (killed, closed, lost) on to its end",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return kf.driving(cmd, func(ctx context.Context, c *canaryClients) error {
				return c.finished(cmd, args[0], c.runner.Drive(ctx, args[0]))
			})
		},
	}
	kf.add(cmd)
	return cmd
}

// standbyImage is the image of a canary's standby driver: image when
// given, else the installed manager's agent image (pinned by digest, with
// those of its pull secrets that namespace ns has too), else the one this
// CLI's version names.
func standbyImage(ctx context.Context, cs kubernetes.Interface, ns, image string) (string, []string, error) {
	if image != "" {
		return image, nil, nil
	}
	if running, err := manifest.ReadRunning(ctx, cs); err == nil {
		var secrets []string
		for _, name := range running.PullSecrets {
			if _, err := cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				secrets = append(secrets, name)
			}
		}
		return running.Image, secrets, nil
	}
	ref, err := manifest.AgentImage("", "")
	if err != nil {
		return "", nil, fmt.Errorf("the canary's driver in the cluster needs the agent image: %w (or start it with --driver laptop)", err)
	}
	return ref, nil, nil
}
