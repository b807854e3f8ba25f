// Package canarydriver is `tunnel-agent canary-driver`: a canary's standby
// driver in the cluster (canary.Standby). It waits while another driver (a
// laptop's CLI) holds the canary's lease, and when that lease lapses,
// drives the canary to its end by the same rules, as the ServiceAccount
// the starting user made for it.
package canarydriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"tunnel.dev/tunnel/canary"
)

// Command is `tunnel-agent canary-driver --service SERVICE`.
func Command() *cobra.Command {
	var service, witness string
	cmd := &cobra.Command{
		Use:   "canary-driver",
		Short: "Stand by beside a canary in its namespace, and drive it to its end when its driver stops",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
			if ns == "" || pod == "" || service == "" {
				return errors.New("canary-driver runs in a pod: POD_NAMESPACE, POD_NAME and --service are needed")
			}
			rc, err := rest.InClusterConfig()
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return err
			}
			var w map[string]string
			if err := json.Unmarshal([]byte(witness), &w); err != nil || len(w) == 0 {
				return fmt.Errorf("--witness %q: want the canary's witness as JSON", witness)
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			r := &canary.Runner{
				Store:  canary.Store{CS: cs, Namespace: ns},
				Leases: canary.Leases{CS: cs, Namespace: ns},
				Work:   canary.Workloads{CS: cs, Namespace: ns},
				Dyn:    dyn,
				Me: &canary.Driver{User: fmt.Sprintf("system:serviceaccount:%s:%s", ns, canary.StandbyName(service)),
					Host: pod, PID: os.Getpid(), Cluster: true},
				Progress: func(s string) { log.Info(s) },
				Witness:  w,
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			go serveMetrics(ctx, newCollector(r.Store, r.Leases, service))
			return Run(ctx, r, service, log)
		},
	}
	cmd.Flags().StringVar(&service, "service", "", "the Service whose canary to drive")
	cmd.Flags().StringVar(&witness, "witness", "", "what the canary started as (JSON), which its record must match")
	return cmd
}

// Run stands by and drives until the canary ends: nil then, whatever its
// end (a rollback is the driver's success), or when its record is gone. A
// driver that takes the lease back (a laptop's resume) sends it back to
// standing by. Stopped before the end (a drain, an eviction), it fails, so
// that its Job starts another pod.
func Run(ctx context.Context, r *canary.Runner, service string, log *slog.Logger) error {
	for {
		err := r.Drive(ctx, service)
		st, gerr := r.Store.Get(context.WithoutCancel(ctx), service)
		switch {
		case gerr == nil && st.Phase.Done():
			log.Info("the canary ended", "phase", st.Phase, "reason", st.Reason)
			return nil
		case errors.Is(gerr, canary.ErrNotFound):
			log.Info("the canary's record is gone")
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("stopped before the canary's end: %w", ctx.Err())
		case errors.Is(err, canary.ErrTakenOver):
			log.Info("another driver took the canary; standing by", "err", err)
		case err != nil:
			return err // the Job starts the pod again
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped before the canary's end: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
