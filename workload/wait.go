package workload

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	case Job, CronJob:
		return c.waitBatch(ctx, ns, r, timeout, progress)
	}
	w, err := c.Get(ctx, ns, r)
	if err != nil {
		return err
	}
	if !Recreates(w) {
		return rollout.WaitSet(ctx, c.CS, r.Kind, ns, r.Name, timeout, progress)
	}
	return rollout.Recreate(ctx, c.CS, rollout.Set{Kind: r.Kind, Namespace: ns, Name: r.Name, UID: w.UID,
		Selector: w.Selector, Template: &w.Template, Want: w.Replicas()}, timeout, progress)
}

// waitBatch waits, when a Job is suspended, until its pods are gone (or
// finished): the laptop is then its only worker. Its pods are counted,
// not its status, which leaves out those still in their grace period. A
// Job resumed, or a CronJob, has nothing to wait for: the next run starts
// when it starts.
func (c Client) waitBatch(ctx context.Context, ns string, r Ref, timeout time.Duration, progress func(string)) error {
	if r.Kind != Job {
		return nil
	}
	said := false
	deadline := time.Now().Add(timeout)
	for {
		w, err := c.Get(ctx, ns, r)
		if err != nil {
			return err
		}
		if s, _, _ := unstructured.NestedBool(w.Object.Object, "spec", "suspend"); !s || w.Selector == nil {
			return nil
		}
		sel, err := metav1.LabelSelectorAsSelector(w.Selector)
		if err != nil {
			return err
		}
		pods, err := c.CS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return fmt.Errorf("list the pods of %s: %w", r.Describe(ns), err)
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				running++
			}
		}
		if running == 0 {
			return nil
		}
		if !said {
			progress(fmt.Sprintf("Waiting for the %d pods of %s to stop", running, r.Describe(ns)))
			said = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still runs %d pods after %s", r.Describe(ns), running, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Replicas is how many pods w should run: a DaemonSet's, as many as
// nodes it is scheduled to; a Job's, as many as run at once.
func (w *Workload) Replicas() int32 {
	if w.Kind == Job {
		if n, found, _ := unstructured.NestedInt64(w.Object.Object, "spec", "parallelism"); found {
			return int32(n)
		}
		return 1
	}
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
		o := w.Object.Object
		if p, _, _ := unstructured.NestedBool(o, "spec", "paused"); p {
			return fmt.Sprintf("%s is paused (spec.paused), so its pods would not get the sidecar", w.Describe())
		}
		steps, _, _ := unstructured.NestedSlice(o, "spec", "strategy", "canary", "steps")
		for i, st := range steps {
			m, _ := st.(map[string]any)
			if pause, ok := m["pause"].(map[string]any); ok && pause["duration"] == nil {
				return fmt.Sprintf("%s's canary strategy pauses at step %d until someone promotes it, so its pods would not all get the sidecar", w.Describe(), i+1)
			}
		}
		if auto, found, _ := unstructured.NestedBool(o, "spec", "strategy", "blueGreen", "autoPromotionEnabled"); found && !auto {
			return fmt.Sprintf("%s's blue-green strategy waits for someone to promote it (autoPromotionEnabled: false), so its active pods would not get the sidecar", w.Describe())
		}
	}
	return ""
}

// Recreates says whether tunnel replaces w's pods itself when its template
// changes (which needs the right to delete pods): a ReplicaSet's, and a
// StatefulSet's or DaemonSet's updated OnDelete.
func Recreates(w *Workload) bool {
	return w.Kind == ReplicaSet || (w.Kind == StatefulSet || w.Kind == DaemonSet) && onDelete(w)
}

// Unstick lets a StatefulSet whose template was put back after a failed
// rollout go on: its controller does not replace a pod of the failed
// template that never became ready (kubernetes/kubernetes#67250), so the
// set would stay broken. Such pods are deleted; the controller makes them
// again from the template put back. Other kinds need nothing.
func (c Client) Unstick(ctx context.Context, ns string, r Ref) {
	if r.Kind != StatefulSet {
		return
	}
	w, err := c.Get(ctx, ns, r)
	if err != nil {
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(w.Selector)
	if err != nil {
		return
	}
	pods, err := c.CS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		ctl := metav1.GetControllerOf(p)
		if ctl == nil || ctl.UID != w.UID || p.DeletionTimestamp != nil || rollout.Runs(p, &w.Template) || rollout.Ready(p) {
			continue
		}
		_ = c.CS.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
	}
}
