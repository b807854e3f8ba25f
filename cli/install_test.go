package cli

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/workload"
)

// uninstall --agent NAME: a name of nothing is an error, not "the sidecar
// is out of deployment NAME".
func TestSidecarRef(t *testing.T) {
	lbl := map[string]string{"app": "db"}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
		Spec: appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db"}, {Name: inject.Container}}}}}}
	plain := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: "shop"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "plain"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "plain"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}}}
	// A Service tunnel changed names a Deployment that is gone.
	gone := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: "shop",
		Annotations: map[string]string{inject.WorkloadAnnot: "old", inject.CapturedAnnot: "80/TCP=8080"}}}
	wc := workload.Client{CS: fake.NewClientset(sts, plain, gone)}
	for name, want := range map[string]workload.Ref{
		"db":    {Kind: workload.StatefulSet, Name: "db"}, // the one with a sidecar
		"plain": {Kind: workload.Deployment, Name: "plain"},
		"old":   {Kind: workload.Deployment, Name: "old"},
	} {
		if got, err := sidecarRef(t.Context(), wc, "shop", name); err != nil || got != want {
			t.Errorf("sidecarRef(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := sidecarRef(t.Context(), wc, "shop", "typo"); err == nil || !strings.Contains(err.Error(), `no workload or Service named "typo" in namespace shop`) {
		t.Errorf("sidecarRef of a name of nothing: %v", err)
	}
}
