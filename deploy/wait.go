package deploy

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rollout"
)

// waitSet waits until a StatefulSet or DaemonSet runs its current template
// on every pod it should, with progress; a pod that cannot start ends the
// wait at once with its reason.
func waitSet(ctx context.Context, cs kubernetes.Interface, kind, ns, name string, timeout time.Duration, progress func(string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		done, ready, want, sel, err := setStatus(ctx, cs, kind, ns, name)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s %s/%s did not roll out within %s", kind, ns, name, timeout)
			}
			return fmt.Errorf("read %s %s/%s: %w", kind, ns, name, err)
		}
		if done {
			return nil
		}
		if msg := fmt.Sprintf("Waiting for %s %s/%s: %d of %d pods ready", kind, ns, name, ready, want); msg != last {
			progress(msg)
			last = msg
		}
		reason, permanent := trouble(ctx, cs, ns, sel)
		if permanent {
			return fmt.Errorf("%s %s/%s did not roll out: %s", kind, ns, name, reason)
		}
		select {
		case <-ctx.Done():
			if reason == "" {
				reason = "its pods did not become ready"
			}
			return fmt.Errorf("%s %s/%s did not roll out within %s: %s", kind, ns, name, timeout, reason)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// setStatus says whether the set has rolled out, how far it is, and its selector.
func setStatus(ctx context.Context, cs kubernetes.Interface, kind, ns, name string) (done bool, ready, want int32, sel string, err error) {
	switch kind {
	case "StatefulSet":
		s, err := cs.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, 0, 0, "", err
		}
		want = 1
		if s.Spec.Replicas != nil {
			want = *s.Spec.Replicas
		}
		st := s.Status
		sel = metav1.FormatLabelSelector(s.Spec.Selector)
		done = s.Generation <= st.ObservedGeneration && st.UpdatedReplicas == want && st.ReadyReplicas == want &&
			(st.UpdateRevision == "" || st.CurrentRevision == st.UpdateRevision)
		return done, st.ReadyReplicas, want, sel, nil
	case "DaemonSet":
		d, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, 0, 0, "", err
		}
		st := d.Status
		sel = metav1.FormatLabelSelector(d.Spec.Selector)
		done = d.Generation <= st.ObservedGeneration && st.UpdatedNumberScheduled == st.DesiredNumberScheduled &&
			st.NumberAvailable == st.DesiredNumberScheduled
		return done, st.NumberAvailable, st.DesiredNumberScheduled, sel, nil
	}
	return true, 0, 0, "", nil
}

// trouble is the first reason a pod of sel is not running, and whether it
// will not fix itself.
func trouble(ctx context.Context, cs kubernetes.Interface, ns, sel string) (string, bool) {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", false
	}
	for i := range pods.Items {
		if r, permanent := rollout.PodTrouble(&pods.Items[i]); r != "" {
			return r, permanent
		}
	}
	return "", false
}
