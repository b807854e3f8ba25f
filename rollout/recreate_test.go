package rollout

import (
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// A set whose controller does not roll its pods has them replaced one at a
// time, each after the one before is ready again, in ordinal order; a pod
// of another owner is left alone.
func TestRecreate(t *testing.T) {
	lbl := map[string]string{"app": "db"}
	owner := []metav1.OwnerReference{{Kind: "StatefulSet", Name: "db", UID: "ss-db", Controller: ptr.To(true)}}
	app := corev1.Container{Name: "db", Image: "db:1"}
	sidecar := corev1.Container{Name: rpc.SidecarContainer, Image: "agent:1"}
	pod := func(name string, own []metav1.OwnerReference, cs ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: lbl, OwnerReferences: own},
			Spec:   corev1.PodSpec{Containers: cs},
			Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	}
	cs := fake.NewClientset(pod("db-10", owner, app), pod("db-2", owner, app), pod("stranger", nil, app))
	var mu sync.Mutex
	var deleted []string
	// The controller: a deleted pod comes back at once with the new
	// template, not ready at first.
	cs.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		name := a.(k8stesting.DeleteAction).GetName()
		mu.Lock()
		deleted = append(deleted, name)
		mu.Unlock()
		p := pod(name, owner, app, sidecar)
		p.Status.Conditions = nil
		_ = cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), p, "shop")
		go func() {
			time.Sleep(50 * time.Millisecond)
			_ = cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod(name, owner, app, sidecar), "shop")
		}()
		return true, nil, nil
	})
	tmpl := &corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl}, Spec: corev1.PodSpec{Containers: []corev1.Container{app, sidecar}}}
	var lines []string
	err := Recreate(t.Context(), cs, Set{Kind: "StatefulSet", Namespace: "shop", Name: "db", UID: "ss-db",
		Selector: &metav1.LabelSelector{MatchLabels: lbl}, Template: tmpl, Want: 2}, time.Minute, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatalf("Recreate: %v", err)
	}
	if strings.Join(deleted, " ") != "db-2 db-10" {
		t.Errorf("pods replaced: %v, want db-2 then db-10", deleted)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "Replacing pod db-2 of statefulset shop/db") {
		t.Errorf("progress: %q", lines)
	}
	// Taken out again: pods with the sidecar are the old ones.
	if Runs(pod("x", owner, app, sidecar), &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{app}}}) {
		t.Error("a pod with the sidecar runs a template without it")
	}
	if !Runs(pod("x", owner, app, corev1.Container{Name: "istio-proxy"}), &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{app}}}) {
		t.Error("a container admission added makes a pod another template's")
	}
}
