package inject

import (
	"encoding/json"
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/release"
	"tunnel.dev/tunnel/workload"
)

// Replacing swaps each app container for the idle stand-in, probes off,
// one replica, the sidecar untouched; putting back gives the object as it
// was, field for field, those it lacked still lacking.
func TestReplaceAndRestoreOps(t *testing.T) {
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}}
	d := deployment("web",
		corev1.Container{Name: "app", Image: "web:1", Command: []string{"/web"}, ReadinessProbe: probe, Env: []corev1.EnvVar{{Name: "DB", Value: "x"}}},
		corev1.Container{Name: "log", Image: "log:1", Args: []string{"-v"}, LivenessProbe: probe},
		sidecar("sidecar", "--capture", "18100=8080"))
	d.Spec.Replicas = ptr.To(int32(3))
	cs := fake.NewClientset(d)
	wc := workload.Client{CS: cs}
	ref := workload.Ref{Kind: workload.Deployment, Name: "web"}
	w, err := wc.Get(t.Context(), "shop", ref)
	if err != nil {
		t.Fatal(err)
	}
	before := w.Object.DeepCopy()

	ops, err := replaceOps(w, "agent:1", "web-http", "alice@laptop")
	if err != nil {
		t.Fatal(err)
	}
	if err := wc.JSONPatch(t.Context(), w, ops, ReplaceManager); err != nil {
		t.Fatalf("replace: %v", err)
	}
	got, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	if *got.Spec.Replicas != 1 {
		t.Errorf("replicas %d, want 1", *got.Spec.Replicas)
	}
	for _, c := range got.Spec.Template.Spec.Containers[:2] {
		if c.Image != "agent:1" || len(c.Command) != 1 || c.Command[0] != release.AgentPath || len(c.Args) != 1 || c.Args[0] != idleArg ||
			c.ReadinessProbe != nil || c.LivenessProbe != nil {
			t.Errorf("container %s after replace: %+v", c.Name, c)
		}
	}
	if got.Spec.Template.Spec.Containers[0].Env[0].Name != "DB" || got.Spec.Template.Spec.Containers[2].Image != "tunnel:v1" {
		t.Errorf("replace changed the env or the sidecar: %+v", got.Spec.Template.Spec.Containers)
	}
	w2, _ := wc.Get(t.Context(), "shop", ref)
	if Replaced(w2) != "web-http" {
		t.Errorf("Replaced = %q", Replaced(w2))
	}
	// Replaced again for another intercept: refused, nothing changed.
	if err := Replace(t.Context(), wc, w2, "agent:1", "other", "bob@x", 0, func(string) {}); !errors.Is(err, ErrReplaced) {
		t.Errorf("a second replace: %v, want %v", err, ErrReplaced)
	}

	ops, err = restoreOps(w2, w2.Object.GetAnnotations()[ReplacedAnnot])
	if err != nil {
		t.Fatal(err)
	}
	if err := wc.JSONPatch(t.Context(), w2, ops, ReplaceManager); err != nil {
		t.Fatalf("restore: %v", err)
	}
	after, _ := wc.Get(t.Context(), "shop", ref)
	if !equality.Semantic.DeepEqual(after.Object.Object["spec"], before.Object["spec"]) || len(after.Object.GetAnnotations()) != 0 {
		a, _ := json.MarshalIndent(after.Object.Object["spec"], "", " ")
		b, _ := json.MarshalIndent(before.Object["spec"], "", " ")
		t.Errorf("put back:\n%s\nwant:\n%s\nannotations %v", a, b, after.Object.GetAnnotations())
	}
}

// A patch built on an object another writer changed since is refused
// whole: nothing of it is half applied.
func TestReplaceRefusesAChangedObject(t *testing.T) {
	d := deployment("web", corev1.Container{Name: "app", Image: "web:1"})
	d.ResourceVersion = "7"
	cs := fake.NewClientset(d)
	wc := workload.Client{CS: cs}
	w, _ := wc.Get(t.Context(), "shop", workload.Ref{Kind: workload.Deployment, Name: "web"})
	w.Object.SetResourceVersion("6")
	ops, _ := replaceOps(w, "agent:1", "i", "h")
	if err := wc.JSONPatch(t.Context(), w, ops, ReplaceManager); err == nil {
		t.Error("a patch of an older version went through")
	}
	got, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	if got.Spec.Template.Spec.Containers[0].Image != "web:1" {
		t.Error("a refused patch changed the workload")
	}
}
