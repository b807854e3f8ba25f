package workload

import (
	"context"
	"encoding/json"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Labels the controllers put on the pods they make, naming the template.
const (
	podTemplateHash     = appsv1.DefaultDeploymentUniqueLabelKey // Deployment's ReplicaSets
	rolloutTemplateHash = "rollouts-pod-template-hash"           // Argo Rollout's ReplicaSets
	revisionLabel       = appsv1.ControllerRevisionHashLabelKey  // StatefulSet's and DaemonSet's ControllerRevisions
)

// PodTemplate returns the template that made pod, when pod is one of r's
// in namespace ns, checked beyond ownerReferences (which anyone who may
// create pods can write): every link from the pod to r is a controller
// reference to the object of that UID, and the template is read from the
// object the controller made the pod from (a ReplicaSet, or a
// ControllerRevision of a StatefulSet or DaemonSet), so a caller can check
// that the pod runs what that template says. The workload as it is now
// comes too: whoever may create ReplicaSets or ControllerRevisions can
// write one naming the workload's UID, so what matters (the sidecar) must
// also be what the live template says, which only those who may change
// the workload can set.
func (c Client) PodTemplate(ctx context.Context, ns string, pod *corev1.Pod, r Ref) (made *corev1.PodTemplateSpec, live *Workload, err error) {
	ref := metav1.GetControllerOf(pod)
	switch r.Kind {
	case Deployment, Rollout, ReplicaSet:
		if ref == nil || ref.Kind != ReplicaSet {
			return nil, nil, fmt.Errorf("%w: pod %s is not run by a ReplicaSet", ErrNotOwned, pod.Name)
		}
		set, err := c.CS.AppsV1().ReplicaSets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("read the ReplicaSet of pod %s: %w", pod.Name, err)
		}
		if set.UID != ref.UID {
			return nil, nil, fmt.Errorf("%w: pod %s was not made by ReplicaSet %s", ErrNotOwned, pod.Name, set.Name)
		}
		owner := metav1.GetControllerOf(set)
		if r.Kind == ReplicaSet {
			if owner != nil || set.Name != r.Name {
				return nil, nil, fmt.Errorf("%w: pod %s does not belong to %s", ErrNotOwned, pod.Name, r.Describe(ns))
			}
			live, err := c.current(ctx, ns, r, set.UID, pod.Name)
			return &set.Spec.Template, live, err
		}
		hash := podTemplateHash
		if r.Kind == Rollout {
			hash = rolloutTemplateHash
		}
		if set.Labels[hash] == "" || pod.Labels[hash] != set.Labels[hash] {
			return nil, nil, fmt.Errorf("%w: pod %s was not made by ReplicaSet %s", ErrNotOwned, pod.Name, set.Name)
		}
		if owner == nil || owner.Kind != r.Kind || owner.Name != r.Name {
			return nil, nil, fmt.Errorf("%w: pod %s does not belong to %s", ErrNotOwned, pod.Name, r.Describe(ns))
		}
		live, err := c.current(ctx, ns, r, owner.UID, pod.Name)
		if err != nil {
			return nil, nil, err
		}
		return &set.Spec.Template, live, nil
	case StatefulSet, DaemonSet:
		if ref == nil || ref.Kind != r.Kind || ref.Name != r.Name {
			return nil, nil, fmt.Errorf("%w: pod %s does not belong to %s", ErrNotOwned, pod.Name, r.Describe(ns))
		}
		live, err := c.current(ctx, ns, r, ref.UID, pod.Name)
		if err != nil {
			return nil, nil, err
		}
		made, err := c.revisionTemplate(ctx, ns, pod, r, ref.UID)
		return made, live, err
	}
	return nil, nil, fmt.Errorf("%q is not a workload kind tunnel intercepts", r.Kind)
}

// current reads r and checks that it is, now, the object of uid: a
// workload deleted and made again under its name is not the one that made
// the pod.
func (c Client) current(ctx context.Context, ns string, r Ref, uid types.UID, pod string) (*Workload, error) {
	w, err := c.Get(ctx, ns, r)
	if err != nil {
		return nil, err
	}
	if w.UID != uid {
		return nil, fmt.Errorf("%w: pod %s belongs to an earlier %s", ErrNotOwned, pod, r.Describe(ns))
	}
	return w, nil
}

// revisionTemplate reads the pod's template from the ControllerRevision
// its label names, one the set controls. A StatefulSet's pods carry the
// revision's name, a DaemonSet's only its hash (the name is SET-HASH).
func (c Client) revisionTemplate(ctx context.Context, ns string, pod *corev1.Pod, r Ref, owner types.UID) (*corev1.PodTemplateSpec, error) {
	label := pod.Labels[revisionLabel]
	if label == "" {
		return nil, fmt.Errorf("%w: pod %s names no revision of %s", ErrNotOwned, pod.Name, r.Describe(ns))
	}
	for _, name := range []string{label, r.Name + "-" + label} {
		rev, err := c.CS.AppsV1().ControllerRevisions(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		if ctl := metav1.GetControllerOf(rev); ctl == nil || ctl.UID != owner {
			continue
		}
		// The revision holds a patch that replaces the template.
		var data struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(rev.Data.Raw, &data); err != nil {
			return nil, fmt.Errorf("read revision %s of %s: %w", rev.Name, r.Describe(ns), err)
		}
		return &data.Spec.Template, nil
	}
	return nil, fmt.Errorf("%w: pod %s names revision %s, which %s does not have", ErrNotOwned, pod.Name, label, r.Describe(ns))
}

// Owner follows a pod's controller references to the workload that runs
// it (through its ReplicaSet, for a Deployment or Rollout), each link
// checked by UID. It returns the workload's UID, or "" when the pod has no
// such owner (a bare pod, a Job's).
func (c Client) Owner(ctx context.Context, pod *corev1.Pod) (Ref, types.UID) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return Ref{}, ""
	}
	switch ref.Kind {
	case StatefulSet, DaemonSet:
		return Ref{Kind: ref.Kind, Name: ref.Name}, ref.UID
	case ReplicaSet:
	default:
		return Ref{}, ""
	}
	set, err := c.CS.AppsV1().ReplicaSets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil || set.UID != ref.UID {
		return Ref{}, ""
	}
	owner := metav1.GetControllerOf(set)
	switch {
	case owner == nil:
		return Ref{Kind: ReplicaSet, Name: set.Name}, set.UID
	case owner.Kind == Deployment, owner.Kind == Rollout:
		return Ref{Kind: owner.Kind, Name: owner.Name}, owner.UID
	}
	return Ref{}, ""
}
