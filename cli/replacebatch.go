package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"tunnel.dev/tunnel/agent/inject"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

// replaceBatch is intercept --replace of a Job or CronJob: no sidecar
// goes into pods that run to completion, and nothing sends them traffic.
// The daemon suspends it for the intercept, which is held by no port, so
// the laptop does its work alone with its environment (--env-file, or
// -- COMMAND); whatever ends the intercept resumes it, as a replaced
// workload of another kind is put back.
func replaceBatch(cmd *cobra.Command, f *interceptFlags, c daemonpb.DaemonClient, wc workload.Client, plan *inject.Plan, local uint32, command []string) error {
	ctx := cmd.Context()
	errOut := cmd.ErrOrStderr()
	w := plan.Workload
	ns := w.Namespace
	spec := &managerpb.InterceptSpec{Name: f.name, Namespace: ns, Workload: w.Ref.String(),
		Mode: managerpb.InterceptMode_GLOBAL, NoFallback: true}
	if spec.Name == "" {
		spec.Name = defaultName(w.Name, "replace", 0, spec)
	}
	if !f.output.json() {
		fmt.Fprintf(errOut, "Suspending %s, so that this machine does its work alone...\n", w.Describe())
	}
	resp, err := c.Intercept(ctx, &daemonpb.InterceptRequest{Spec: spec, LocalPort: local, Replace: true})
	if err != nil {
		return fmt.Errorf("%s", status.Convert(err).Message())
	}
	ic := resp.GetIntercept()
	env, err := writeEnv(ctx, wc.CS, plan, f, errOut)
	if err != nil {
		_, _ = c.Leave(context.WithoutCancel(ctx), &daemonpb.LeaveRequest{Namespace: ns, Name: spec.Name})
		return err
	}
	if f.output.json() {
		if err := printJSON(cmd.OutOrStdout(), ic); err != nil {
			return err
		}
	} else {
		what := "it starts no Job"
		if w.Kind == workload.Job {
			what = "its pods are stopped"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Intercept %s: %s is suspended: %s while this machine does its work; leave resumes it.\n",
			ic.GetSpec().GetName(), w.Describe(), what)
		if running := activeJobs(ctx, wc, w); len(running) > 0 {
			fmt.Fprintf(errOut, "Warning: %s started %s before it was suspended, which run on to their end.\n", w.Describe(), strings.Join(running, ", "))
		}
	}
	return runThenLeave(ctx, c, ns, spec.Name, command, env, errOut)
}

// activeJobs names the Jobs a CronJob runs now (its status says).
func activeJobs(ctx context.Context, wc workload.Client, w *workload.Workload) []string {
	if w.Kind != workload.CronJob {
		return nil
	}
	now, err := wc.Get(ctx, w.Namespace, w.Ref)
	if err != nil {
		return nil
	}
	active, _, _ := unstructured.NestedSlice(now.Object.Object, "status", "active")
	var out []string
	for _, a := range active {
		if m, ok := a.(map[string]any); ok {
			if name, ok := m["name"].(string); ok {
				out = append(out, "job/"+name)
			}
		}
	}
	return out
}
