//go:build linux

// Command lab runs the project's test cluster on this machine: a real
// single-node Kubernetes with laptop network namespaces beside it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/integration/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.ExitCode()) // `lab exec` passes the command's status on
	case err != nil:
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "lab",
		Short:         "A real Kubernetes cluster on this machine, for tunnel's tests and demo",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(upCmd(), downCmd(), statusCmd(), execCmd(), faultCmd(), shapeCmd())
	return root
}

func upCmd() *cobra.Command {
	var cfg lab.Config
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build what is missing and bring the cluster up (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := lab.New(lab.DefaultPaths(), cmd.ErrOrStderr())
			if err := l.Up(cmd.Context(), cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "The lab is up. Admin kubeconfig: %s\n", l.Paths.AdminKubeconfig())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.PodCIDR, "pod-cidr", "10.244.0.0/16", "the cluster's pod CIDR")
	f.StringVar(&cfg.ServiceCIDR, "service-cidr", "10.96.0.0/16", "the cluster's service CIDR")
	f.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	return cmd
}

func downCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop everything the lab started and remove what it made (the build cache stays)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			left, err := lab.New(lab.DefaultPaths(), cmd.ErrOrStderr()).Down(cmd.Context())
			if err != nil {
				return err
			}
			for _, l := range left {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: differs from before the lab:", l)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The lab is down.")
			return nil
		},
	}
}

func statusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "What runs, with versions, addresses and kubeconfig paths",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s := lab.New(lab.DefaultPaths(), nil).Status()
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			} else if output != "" {
				return fmt.Errorf("unknown output format %q: use -o json", output)
			}
			state := "down"
			if s.Up {
				state = "up"
			} else if len(s.Components) > 0 {
				state = "partly up (run lab up to complete it)"
			}
			fmt.Fprintf(out, "lab: %s\n", state)
			fmt.Fprintf(out, "versions: kubernetes %s, etcd %s, coredns %s\n", s.Versions["kubernetes"], s.Versions["etcd"], s.Versions["coredns"])
			if len(s.Components) == 0 {
				return nil
			}
			fmt.Fprintf(out, "pods: %s  services: %s  domain: %s  DNS: %s\n", s.Config.PodCIDR, s.Config.ServiceCIDR, s.Config.ClusterDomain, s.DNSService)
			fmt.Fprintf(out, "API server: https://%s:6443\n", s.NodeAddress)
			fmt.Fprintf(out, "kubeconfig: admin %s, dev %s\n", s.Kubeconfigs["admin"], s.Kubeconfigs["dev"])
			fmt.Fprintf(out, "registry: https://%s (push with SSL_CERT_FILE=%s DOCKER_CONFIG=%s)\n", s.Registry.Host, s.Registry.CA, s.Registry.DockerConfig)
			for _, name := range sortedKeys(s.Components) {
				fmt.Fprintf(out, "  %-24s %s\n", name, s.Components[name])
			}
			for _, name := range sortedKeys(s.Laptops) {
				fmt.Fprintf(out, "laptop %s: %s\n", name, s.Laptops[name])
			}
			fmt.Fprintf(out, "logs: %s\n", s.Logs)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	return cmd
}

func execCmd() *cobra.Command {
	var opt lab.ExecOptions
	var node bool
	cmd := &cobra.Command{
		Use:   "exec [--laptop NAME | --node] [--user admin|dev] -- CMD ARGS...",
		Short: "Run a command in a laptop namespace (made on first use) with KUBECONFIG and kubectl set",
		RunE: func(cmd *cobra.Command, args []string) error {
			if node {
				opt.Laptop = ""
			}
			c, err := lab.Command(cmd.Context(), lab.DefaultPaths(), opt, args...)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			return c.Run()
		},
	}
	f := cmd.Flags()
	f.StringVar(&opt.Laptop, "laptop", "alice", "the laptop to run in")
	f.BoolVar(&node, "node", false, "run in the node's network namespace instead of a laptop's")
	f.StringVar(&opt.User, "user", "admin", "whose kubeconfig: admin or dev")
	return cmd
}

func faultCmd() *cobra.Command {
	var opt lab.FaultOptions
	cmd := &cobra.Command{
		Use: "fault KIND [--laptop NAME] [--for DURATION] [--pod NAMESPACE/POD]",
		Short: "Cause a fault a user's cluster or laptop lives through, and return once it is over: " +
			strings.Join(lab.Faults, ", "),
		Long: `Cause one fault, as the chaos tests do, and return once it is over:
  apiserver       the API server stopped and started again (an upgrade)
  kubelet         containerd and the kubelet restarted on the node
  coredns         CoreDNS's pods deleted at once; returns when the new ones are ready
  manager         the tunnel manager's pod deleted (gracefully); returns when its replacement is ready
  manager-force   the same, at once (--grace-period=0 --force)
  partition       the laptop cut off from everything but its loopback --for DURATION (default 30s)
  udp             the UDP the laptop sends dropped, but DNS (a firewall that lets only TCP through) --for DURATION (default 30s)
  sleep           the laptop's tunnel daemon stopped (SIGSTOP) --for DURATION (default 60s), then SIGCONT
  readdress       the laptop moved to its other address (a Wi-Fi change); again moves it back
  sidecar         the tunnel-agent container of --pod NAMESPACE/POD killed; returns when it runs again`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opt.For == 0 {
				opt.For = map[string]time.Duration{"partition": 30 * time.Second, "udp": 30 * time.Second, "sleep": time.Minute}[args[0]]
			}
			start := time.Now()
			if err := lab.New(lab.DefaultPaths(), cmd.ErrOrStderr()).Fault(cmd.Context(), args[0], opt); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "fault %s over after %s\n", args[0], time.Since(start).Round(100*time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opt.Laptop, "laptop", "alice", "the laptop (partition, udp, sleep, readdress)")
	f.DurationVar(&opt.For, "for", 0, "how long (partition and udp: 30s, sleep: 60s)")
	f.StringVar(&opt.Pod, "pod", "", "NAMESPACE/POD whose sidecar to kill")
	return cmd
}

func shapeCmd() *cobra.Command {
	var opt lab.ShapeOptions
	var loss string
	var off bool
	cmd := &cobra.Command{
		Use:   "shape LAPTOP [--rtt 20ms] [--loss 1%] | LAPTOP --off",
		Short: "Give a laptop's link a round trip and random loss, as a Wi-Fi and a VPN do, or take them off",
		Long: `Give a laptop's link a round trip (--rtt, half of it each way) and random loss (--loss, each
way), as a user's Wi-Fi, VPN and distance do; --off makes it a plain link again. The kernel here
has no netem: the loss is iptables' statistic match, the delay the lab's shaper on an NFQUEUE.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if off {
				opt = lab.ShapeOptions{}
			} else {
				v, err := strconv.ParseFloat(strings.TrimSuffix(loss, "%"), 64)
				if err != nil {
					return fmt.Errorf("--loss %q: want a percentage such as 1%%", loss)
				}
				opt.Loss = v / 100
				if opt.RTT == 0 && opt.Loss == 0 {
					return errors.New("say --rtt, --loss or --off")
				}
			}
			if err := lab.New(lab.DefaultPaths(), cmd.ErrOrStderr()).Shape(cmd.Context(), args[0], opt); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "laptop %s: round trip +%s, loss %g%% each way\n", args[0], opt.RTT, opt.Loss*100)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opt.RTT, "rtt", 0, "round trip added to the laptop's link")
	f.StringVar(&loss, "loss", "0%", "packets lost at random, each way")
	f.BoolVar(&off, "off", false, "a plain link again")
	return cmd
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
