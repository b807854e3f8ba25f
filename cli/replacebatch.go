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
	if f.port != "" || f.service != "" {
		return fmt.Errorf("%s takes no traffic, so --port and --service do not apply to its replace", w.Describe())
	}
	spec := &managerpb.InterceptSpec{Name: f.name, Namespace: ns, Workload: w.Ref.String(),
		Mode: managerpb.InterceptMode_GLOBAL, NoFallback: true}
	if spec.Name == "" { // NAME-cronjob, NAME-job: a Job and a CronJob may share a name
		spec.Name = defaultName(w.Name, strings.ToLower(w.Kind), 0, spec)
	}
	wasSuspended, _, _ := unstructured.NestedBool(w.Object.Object, "spec", "suspend")
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
		what, then := "it starts no Job", "leave resumes it"
		if w.Kind == workload.Job {
			what, then = "its pods are stopped", "leave resumes it, and its pods start again"
		}
		if wasSuspended {
			then = "it was suspended already, and leave leaves it so"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Intercept %s: %s is suspended: %s while this machine does its work; %s.\n",
			ic.GetSpec().GetName(), w.Describe(), what, then)
		if running := activeJobs(ctx, wc, w); len(running) > 0 {
			fmt.Fprintf(errOut, "Warning: %s started %s before it was suspended, which run on to their end.\n", w.Describe(), strings.Join(running, ", "))
		}
		// Kubernetes counts a scheduled time that falls while suspended
		// as missed, and a CronJob with no starting deadline starts the
		// latest missed run as soon as it resumes.
		if _, hasDeadline, _ := unstructured.NestedInt64(w.Object.Object, "spec", "startingDeadlineSeconds"); w.Kind == workload.CronJob && !hasDeadline && !wasSuspended {
			fmt.Fprintf(errOut, "Note: if its schedule comes round while it is suspended, Kubernetes starts that run when leave resumes it (the CronJob sets no startingDeadlineSeconds).\n")
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
