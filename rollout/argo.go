package rollout

import (
	"context"
	"fmt"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// ArgoRollouts is the resource of Argo Rollouts' Rollout.
var argoRollouts = schema.GroupVersionResource{Group: "argoproj.io", Version: "v1alpha1", Resource: "rollouts"}

// WaitArgo waits until an Argo Rollout runs its current template on every
// replica and calls itself Healthy, as Wait does for a Deployment. A
// Rollout its strategy has paused (a canary step's pause, or paused by
// hand) or that it calls Degraded ends the wait at once, with its message:
// it would not go on without someone's promote.
func WaitArgo(ctx context.Context, dyn dynamic.Interface, cs kubernetes.Interface, ns, name string, timeout time.Duration, progress func(string)) error {
	err := poll(ctx, "rollout", ns, name, timeout, progress, func(ctx context.Context) (step, error) {
		u, err := dyn.Resource(argoRollouts).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return step{}, err
		}
		want, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
		if !found {
			want = 1
		}
		num := func(f string) int32 {
			v, _, _ := unstructured.NestedInt64(u.Object, "status", f)
			return int32(v)
		}
		observed, _, _ := unstructured.NestedString(u.Object, "status", "observedGeneration")
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		message, _, _ := unstructured.NestedString(u.Object, "status", "message")
		s := step{want: int32(want), updated: true, ready: min(num("updatedReplicas"), num("availableReplicas")),
			starting: observed != strconv.FormatInt(u.GetGeneration(), 10)}
		s.done = !s.starting && phase == "Healthy" && num("updatedReplicas") == s.want &&
			num("availableReplicas") == s.want && num("replicas") == s.want
		var sel *metav1.LabelSelector
		if m, ok, _ := unstructured.NestedMap(u.Object, "spec", "selector"); ok {
			sel = &metav1.LabelSelector{}
			_ = runtime.DefaultUnstructuredConverter.FromUnstructured(m, sel)
		}
		s.trouble = func() (string, bool) {
			switch {
			case s.starting:
			case phase == "Paused":
				return fmt.Sprintf("it is paused (%s); it goes on once promoted (kubectl argo rollouts promote %s)", message, name), true
			case phase == "Degraded":
				return fmt.Sprintf("it is degraded: %s", message), true
			}
			return podsTrouble(ctx, cs, ns, sel, nil)
		}
		return s, nil
	})
	return settle(ctx, err)
}
