package rollout

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rpc"
)

// Set is a workload whose controller makes its pods itself: a ReplicaSet,
// or a StatefulSet or DaemonSet.
type Set struct {
	Kind, Namespace, Name string
	UID                   types.UID // the pods' controller
	Selector              *metav1.LabelSelector
	Template              *corev1.PodTemplateSpec // the one its pods should run
	Want                  int32                   // how many pods it should have
}

// Recreate brings a Set whose controller does not replace its pods when
// the template changes (a ReplicaSet; a StatefulSet or DaemonSet updated
// OnDelete) onto its template, as a rolling update with one pod
// unavailable would: it deletes one pod of an older template at a time
// and waits until its replacement is ready before the next.
func Recreate(ctx context.Context, cs kubernetes.Interface, set Set, timeout time.Duration, progress func(string)) error {
	sel, err := metav1.LabelSelectorAsSelector(set.Selector)
	if err != nil {
		return fmt.Errorf("the selector of %s %s/%s: %w", set.Kind, set.Namespace, set.Name, err)
	}
	err = poll(ctx, kindName(set.Kind), set.Namespace, set.Name, timeout, progress, func(ctx context.Context) (step, error) {
		list, err := cs.CoreV1().Pods(set.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return step{}, err
		}
		var old []*corev1.Pod
		ready, live, busy := int32(0), int32(0), false
		for i := range list.Items {
			p := &list.Items[i]
			if ctl := metav1.GetControllerOf(p); ctl == nil || ctl.UID != set.UID {
				continue
			}
			if p.DeletionTimestamp == nil {
				live++
			}
			switch {
			case p.DeletionTimestamp != nil:
				busy = true
			case !Runs(p, set.Template):
				old = append(old, p)
			case podReady(p):
				ready++
			default:
				busy = true
			}
		}
		// A pod deleted and gone, its replacement not yet made: a look
		// in that gap must not take the next one down too.
		busy = busy || live < set.Want
		s := step{ready: ready, want: set.Want, updated: true,
			done: len(old) == 0 && !busy && ready >= set.Want}
		s.trouble = func() (string, bool) {
			return podsTrouble(ctx, cs, set.Namespace, set.Selector, func(p *corev1.Pod) bool { return Runs(p, set.Template) })
		}
		if len(old) > 0 && !busy {
			// Oldest name first: a StatefulSet's pods in ordinal order.
			slices.SortFunc(old, func(a, b *corev1.Pod) int { return compareNames(a.Name, b.Name) })
			p := old[0]
			progress(fmt.Sprintf("Replacing pod %s of %s %s/%s with one of its new template", p.Name, kindName(set.Kind), set.Namespace, set.Name))
			err := cs.CoreV1().Pods(set.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
			if err != nil {
				s.trouble = func() (string, bool) {
					return fmt.Sprintf("pod %s runs the old template and cannot be replaced: %v", p.Name, err), true
				}
			}
		}
		return s, nil
	})
	return settle(ctx, err)
}

// compareNames orders names by length, then bytes: web-2 before web-10.
func compareNames(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Runs says whether pod p runs template t: each of t's containers, by
// name, image, command and arguments (admission may have added others).
func Runs(p *corev1.Pod, t *corev1.PodTemplateSpec) bool {
	for _, want := range t.Spec.Containers {
		i := slices.IndexFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == want.Name })
		if i < 0 {
			return false
		}
		got := p.Spec.Containers[i]
		if got.Image != want.Image || !slices.Equal(got.Command, want.Command) || !slices.Equal(got.Args, want.Args) {
			return false
		}
	}
	// The sidecar the template no longer has: admission may add other
	// containers, but never tunnel's.
	return slices.ContainsFunc(t.Spec.Containers, func(c corev1.Container) bool { return c.Name == rpc.SidecarContainer }) ||
		!slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == rpc.SidecarContainer })
}

// Ready says whether the pod's Ready condition holds.
func Ready(p *corev1.Pod) bool { return podReady(p) }

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func kindName(kind string) string {
	switch kind {
	case "ReplicaSet":
		return "replicaset"
	case "StatefulSet":
		return "statefulset"
	case "DaemonSet":
		return "daemonset"
	}
	return kind
}
