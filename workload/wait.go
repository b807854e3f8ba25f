package workload

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"tunnel.dev/tunnel/rollout"
)

// Wait waits until every pod of the workload runs its current template
// and is ready, reporting progress. Where the kind's controller does not
// replace pods on a template change (a ReplicaSet, or a StatefulSet or
// DaemonSet updated OnDelete), it replaces them itself, one at a time.
func (c Client) Wait(ctx context.Context, ns string, r Ref, timeout time.Duration, progress func(string)) error {
	switch r.Kind {
	case Deployment:
		return rollout.Wait(ctx, c.CS, ns, r.Name, timeout, progress)
	case Rollout:
		return rollout.WaitArgo(ctx, c.Dyn, c.CS, ns, r.Name, timeout, progress)
	}
	w, err := c.Get(ctx, ns, r)
	if err != nil {
		return err
	}
	if r.Kind != ReplicaSet && !onDelete(w) {
		return rollout.WaitSet(ctx, c.CS, r.Kind, ns, r.Name, timeout, progress)
	}
	return rollout.Recreate(ctx, c.CS, rollout.Set{Kind: r.Kind, Namespace: ns, Name: r.Name, UID: w.UID,
		Selector: w.Selector, Template: &w.Template, Want: w.Replicas()}, timeout, progress)
}

// Replicas is how many pods w should run: a DaemonSet's, as many as
// nodes it is scheduled to.
func (w *Workload) Replicas() int32 {
	if w.Kind == DaemonSet {
		n, _, _ := unstructured.NestedInt64(w.Object.Object, "status", "desiredNumberScheduled")
		return int32(n)
	}
	if n, found, _ := unstructured.NestedInt64(w.Object.Object, "spec", "replicas"); found {
		return int32(n)
	}
	return 1
}

func onDelete(w *Workload) bool {
	t, _, _ := unstructured.NestedString(w.Object.Object, "spec", "updateStrategy", "type")
	return t == "OnDelete"
}

// Partial says why a change to w's template would not reach all of its
// pods ("" when it would): a StatefulSet that updates only the pods from
// an ordinal on, or a Rollout paused by hand. A Service pointed at a
// sidecar those pods lack would fail their requests.
func Partial(w *Workload) string {
	switch w.Kind {
	case StatefulSet:
		if p, _, _ := unstructured.NestedInt64(w.Object.Object, "spec", "updateStrategy", "rollingUpdate", "partition"); p > 0 {
			return fmt.Sprintf("%s updates only its pods from ordinal %d on (updateStrategy.rollingUpdate.partition), so its other pods would not get the sidecar", w.Describe(), p)
		}
	case Rollout:
		if p, _, _ := unstructured.NestedBool(w.Object.Object, "spec", "paused"); p {
			return fmt.Sprintf("%s is paused (spec.paused), so its pods would not get the sidecar", w.Describe())
		}
	}
	return ""
}
