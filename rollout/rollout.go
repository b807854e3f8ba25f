// Package rollout waits for workloads to roll out and says, in one
// sentence, why a pod will not start: what intercepts, deploys, canaries
// and the manager's install all report.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// ErrFailed means a rollout did not complete; the message has the pod's reason.
var ErrFailed = errors.New("rollout failed")

// Stuck says whether a container waiting for this reason will not start
// without help (a new image, a fixed command or configuration).
func Stuck(reason string) bool {
	switch reason {
	case "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName",
		"CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
		return true
	}
	return false
}

// Wait waits until every replica of the Deployment runs its current
// template and is available, reporting progress as it changes. A pod of the
// new template that cannot start ends the wait at once with its reason; so
// does the timeout, with the last reason seen.
func Wait(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration, progress func(string)) error {
	err := poll(ctx, "deployment", ns, name, timeout, progress, func(ctx context.Context) (step, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return step{}, err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st := d.Status
		s := step{
			done: d.Generation <= st.ObservedGeneration && st.UpdatedReplicas == want && st.Replicas == want &&
				st.AvailableReplicas == want && settled(ctx, cs, d, want),
			ready: min(st.UpdatedReplicas, st.AvailableReplicas), want: want, updated: true,
			starting: d.Generation > st.ObservedGeneration,
		}
		s.trouble = func() (string, bool) {
			return podsTrouble(ctx, cs, ns, d.Spec.Selector, func(p *corev1.Pod) bool { return sameTemplate(p, d) })
		}
		return s, nil
	})
	return settle(ctx, err)
}

// WaitSet waits until a StatefulSet or DaemonSet runs its current template
// on every pod it should, as Wait does for a Deployment.
func WaitSet(ctx context.Context, cs kubernetes.Interface, kind, ns, name string, timeout time.Duration, progress func(string)) error {
	err := poll(ctx, strings.ToLower(kind), ns, name, timeout, progress, func(ctx context.Context) (step, error) {
		var s step
		var sel *metav1.LabelSelector
		switch kind {
		case "StatefulSet":
			set, err := cs.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return s, err
			}
			s.want = 1
			if set.Spec.Replicas != nil {
				s.want = *set.Spec.Replicas
			}
			st := set.Status
			sel = set.Spec.Selector
			// Its pods update one at a time, in order: the count that
			// moves is of the pods of the new revision that are ready.
			s.ready, s.updated = updatedReady(ctx, cs, ns, sel, st.UpdateRevision), true
			s.starting = set.Generation > st.ObservedGeneration
			s.done = !s.starting && st.UpdatedReplicas == s.want && st.ReadyReplicas == s.want && st.Replicas == s.want &&
				(st.UpdateRevision == "" || st.CurrentRevision == st.UpdateRevision)
		case "DaemonSet":
			set, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return s, err
			}
			st := set.Status
			s.ready, s.want, sel = min(st.UpdatedNumberScheduled, st.NumberAvailable), st.DesiredNumberScheduled, set.Spec.Selector
			s.updated, s.starting = true, set.Generation > st.ObservedGeneration
			s.done = !s.starting && st.UpdatedNumberScheduled == st.DesiredNumberScheduled &&
				st.NumberAvailable == st.DesiredNumberScheduled && st.CurrentNumberScheduled == st.DesiredNumberScheduled
		default:
			return step{done: true}, nil
		}
		s.trouble = func() (string, bool) { return podsTrouble(ctx, cs, ns, sel, nil) }
		return s, nil
	})
	return settle(ctx, err)
}

// updatedReady counts the ready pods of sel at a StatefulSet's revision.
func updatedReady(ctx context.Context, cs kubernetes.Interface, ns string, sel *metav1.LabelSelector, revision string) int32 {
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return 0
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: ls.String()})
	if err != nil {
		return 0
	}
	n := int32(0)
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Labels[appsv1.ControllerRevisionHashLabelKey] == revision && podReady(p) {
			n++
		}
	}
	return n
}

// step is what one look at a rollout saw.
type step struct {
	done        bool
	ready, want int32
	updated     bool // ready counts pods of the new template
	starting    bool // the controller has not seen the change yet
	trouble     func() (string, bool)
}

// poll is the loop every rollout wait shares: look until done, report
// progress as it changes, end at once on a pod that will not start, and
// on the timeout with the last reason seen.
func poll(ctx context.Context, kind, ns, name string, timeout time.Duration, progress func(string), look func(context.Context) (step, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		s, err := look(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: %s %s/%s did not roll out within %s", ErrFailed, kind, ns, name, timeout)
			}
			return fmt.Errorf("read %s %s/%s: %w", kind, ns, name, err)
		}
		if s.done {
			return nil
		}
		pods := "pods"
		if s.updated {
			pods = "updated pods"
		}
		msg := fmt.Sprintf("Waiting for %s %s/%s: %d of %d %s ready", kind, ns, name, s.ready, s.want, pods)
		if s.starting {
			msg = fmt.Sprintf("Waiting for %s %s/%s: rollout starting", kind, ns, name)
		}
		if msg != last {
			progress(msg)
			last = msg
		}
		reason, permanent := s.trouble()
		if permanent {
			return fmt.Errorf("%w: %s %s/%s: %s", ErrFailed, kind, ns, name, reason)
		}
		select {
		case <-ctx.Done():
			if reason == "" {
				reason = "its pods did not become ready"
			}
			return fmt.Errorf("%w: %s %s/%s did not roll out within %s: %s", ErrFailed, kind, ns, name, timeout, reason)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// KubeProxySync is how long after an EndpointSlice changes kube-proxy may
// still send traffic by the old one.
const KubeProxySync = 2 * time.Second

// settle ends a wait that err did not end by giving kube-proxy the time
// to apply the endpoints of the pods it waited for.
func settle(ctx context.Context, err error) error {
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-time.After(KubeProxySync):
	}
	return nil
}

// ServicesFor lists the Services whose selector picks d's pods.
func ServicesFor(ctx context.Context, cs kubernetes.Interface, d *appsv1.Deployment) ([]corev1.Service, error) {
	return ServicesSelecting(ctx, cs, d.Namespace, d.Spec.Template.Labels)
}

// ServicesSelecting lists the Services of ns whose selector picks pods
// with these labels, keys in ignore aside (labels a controller adds to its
// pods and to the Services in front of them, as Argo Rollouts does its
// template hash).
func ServicesSelecting(ctx context.Context, cs kubernetes.Interface, ns string, podLabels labels.Set, ignore ...string) ([]corev1.Service, error) {
	list, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services in namespace %s: %w", ns, err)
	}
	var out []corev1.Service
	for _, s := range list.Items {
		sel := maps.Clone(s.Spec.Selector)
		for _, k := range ignore {
			delete(sel, k)
		}
		if len(sel) > 0 && labels.SelectorFromSet(sel).Matches(podLabels) {
			out = append(out, s)
		}
	}
	return out, nil
}

// settled says whether every Service in front of d lists exactly the
// ready pods of its rollout and no terminating ones: until then a request
// may still be sent to a pod that is going away.
func settled(ctx context.Context, cs kubernetes.Interface, d *appsv1.Deployment, want int32) bool {
	svcs, err := ServicesFor(ctx, cs, d)
	if err != nil {
		return true // nothing to wait for that we may see
	}
	for _, svc := range svcs {
		slices, err := cs.DiscoveryV1().EndpointSlices(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc.Name})
		if err != nil {
			return true
		}
		ready := int32(0)
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
					return false
				}
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					ready++
				}
			}
		}
		if ready < want {
			return false
		}
	}
	return true
}

// podsTrouble describes why a pod of sel (one keep accepts, when given)
// is not ready, and whether that will not fix itself.
func podsTrouble(ctx context.Context, cs kubernetes.Interface, ns string, sel *metav1.LabelSelector, keep func(*corev1.Pod) bool) (string, bool) {
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return "", false
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: ls.String()})
	if err != nil {
		return "", false
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || (keep != nil && !keep(p)) {
			continue
		}
		if r, permanent := PodTrouble(p); r != "" {
			return r, permanent
		}
	}
	return "", false
}

// PodTrouble says why one pod is not ready ("" when nothing is wrong yet),
// and whether that will not fix itself: the one diagnosis every rollout
// wait (sidecars, deploys, the manager) reports.
func PodTrouble(p *corev1.Pod) (string, bool) {
	for _, cst := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if w := cst.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
			r := fmt.Sprintf("pod %s: container %s: %s", p.Name, cst.Name, w.Reason)
			if w.Message != "" {
				r += ": " + w.Message
			}
			return r, Stuck(w.Reason)
		}
		if !cst.Ready && cst.State.Running != nil {
			return fmt.Sprintf("pod %s: container %s is running but not ready (failing readiness probe)", p.Name, cst.Name), false
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf("pod %s cannot be scheduled: %s", p.Name, c.Message), false
		}
	}
	return "", false
}

// sameTemplate says whether pod p runs d's current pod template: its
// containers are the template's by name, image, command and arguments (a
// new capture changes only the sidecar's arguments).
func sameTemplate(p *corev1.Pod, d *appsv1.Deployment) bool {
	tc := d.Spec.Template.Spec.Containers
	if len(p.Spec.Containers) != len(tc) {
		return false
	}
	for i := range tc {
		pc := p.Spec.Containers[i]
		if pc.Name != tc[i].Name || pc.Image != tc[i].Image ||
			!slices.Equal(pc.Command, tc[i].Command) || !slices.Equal(pc.Args, tc[i].Args) {
			return false
		}
	}
	return true
}
