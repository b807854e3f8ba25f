package inject

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/release"
	"tunnel.dev/tunnel/workload"
)

func replaceFixture(t *testing.T) (workload.Client, *fake.Clientset, workload.Ref) {
	t.Helper()
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}}
	hook := &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/web", "drain"}}}}
	d := deployment("web",
		corev1.Container{Name: "app", Image: "web:1", Command: []string{"/web"}, ReadinessProbe: probe, Lifecycle: hook, Env: []corev1.EnvVar{{Name: "DB", Value: "x"}}},
		corev1.Container{Name: "log", Image: "log:1", Args: []string{"-v"}, LivenessProbe: probe},
		sidecar("sidecar", "--capture", "18100=8080"))
	d.Spec.Replicas = ptr.To(int32(3))
	cs := fake.NewClientset(d)
	return workload.Client{CS: cs}, cs, workload.Ref{Kind: workload.Deployment, Name: "web"}
}

func patchWith(t *testing.T, wc workload.Client, ref workload.Ref, build func(*workload.Workload) []map[string]any) {
	t.Helper()
	w, err := wc.Get(t.Context(), "shop", ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := wc.JSONPatch(t.Context(), w, build(w), ReplaceManager); err != nil {
		t.Fatal(err)
	}
}

// Replacing swaps each app container for the idle stand-in, probes and
// hooks off, one replica, the sidecar untouched; putting back gives the
// object as it was, field for field, those it lacked still lacking.
func TestReplaceAndRestoreOps(t *testing.T) {
	wc, cs, ref := replaceFixture(t)
	w, _ := wc.Get(t.Context(), "shop", ref)
	before := w.Object.DeepCopy()
	patchWith(t, wc, ref, func(w *workload.Workload) []map[string]any {
		ops, err := replaceOps(w, "agent:1", "web-http", "alice@laptop")
		if err != nil {
			t.Fatal(err)
		}
		return ops
	})
	got, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	if *got.Spec.Replicas != 1 {
		t.Errorf("replicas %d, want 1", *got.Spec.Replicas)
	}
	for _, c := range got.Spec.Template.Spec.Containers[:2] {
		if c.Image != "agent:1" || !isStandIn(c, "agent:1") || c.ReadinessProbe != nil || c.LivenessProbe != nil || c.Lifecycle != nil {
			t.Errorf("container %s after replace: %+v", c.Name, c)
		}
	}
	if got.Spec.Template.Spec.Containers[0].Command[0] != release.AgentPath || got.Spec.Template.Spec.Containers[0].Env[0].Name != "DB" ||
		got.Spec.Template.Spec.Containers[2].Image != "tunnel:v1" {
		t.Errorf("replace changed the env or the sidecar: %+v", got.Spec.Template.Spec.Containers)
	}
	w2, _ := wc.Get(t.Context(), "shop", ref)
	if Replaced(w2) != "web-http" {
		t.Errorf("Replaced = %q", Replaced(w2))
	}
	// Replaced again for another intercept: refused, nothing changed.
	if changed, err := Replace(t.Context(), wc, w2, "agent:1", "other", "bob@x", 0, func(string) {}); !errors.Is(err, ErrReplaced) || changed {
		t.Errorf("a second replace: %v, %v; want %v", changed, err, ErrReplaced)
	}
	// Another intercept's leave puts nothing back.
	if back, err := Restore(t.Context(), wc, "shop", ref, "other", "bob@x", 0, func(string) {}); back || err != nil {
		t.Errorf("another intercept's restore: %v, %v", back, err)
	}
	var kept []string
	patchWith(t, wc, ref, func(w *workload.Workload) []map[string]any {
		rep, _ := readReplacement(w)
		var ops []map[string]any
		ops, kept = restoreOps(w, rep)
		return ops
	})
	after, _ := wc.Get(t.Context(), "shop", ref)
	if len(kept) != 0 || !equality.Semantic.DeepEqual(after.Object.Object["spec"], before.Object["spec"]) || len(after.Object.GetAnnotations()) != 0 {
		a, _ := json.MarshalIndent(after.Object.Object["spec"], "", " ")
		b, _ := json.MarshalIndent(before.Object["spec"], "", " ")
		t.Errorf("put back (kept %v):\n%s\nwant:\n%s\nannotations %v", kept, a, b, after.Object.GetAnnotations())
	}
}

// What someone changed since the replace (a new image deployed, a scale)
// stays as they made it; the rest is put back.
func TestRestoreKeepsWhatChangedSince(t *testing.T) {
	wc, cs, ref := replaceFixture(t)
	patchWith(t, wc, ref, func(w *workload.Workload) []map[string]any {
		ops, _ := replaceOps(w, "agent:1", "web-http", "alice@laptop")
		return ops
	})
	d, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	d.Spec.Template.Spec.Containers[0].Image, d.Spec.Template.Spec.Containers[0].Command, d.Spec.Template.Spec.Containers[0].Args = "web:2", []string{"/web2"}, nil
	d.Spec.Replicas = ptr.To(int32(5))
	if _, err := cs.AppsV1().Deployments("shop").Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var kept []string
	patchWith(t, wc, ref, func(w *workload.Workload) []map[string]any {
		rep, _ := readReplacement(w)
		var ops []map[string]any
		ops, kept = restoreOps(w, rep)
		return ops
	})
	got, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	app, log := got.Spec.Template.Spec.Containers[0], got.Spec.Template.Spec.Containers[1]
	if app.Image != "web:2" || app.Command[0] != "/web2" || log.Image != "log:1" || log.LivenessProbe == nil || *got.Spec.Replicas != 5 {
		t.Errorf("after restore: app %s %v, log %s, replicas %d", app.Image, app.Command, log.Image, *got.Spec.Replicas)
	}
	if strings.Join(kept, ", ") != "container app, its replicas" {
		t.Errorf("kept %v", kept)
	}
}

// An annotation that says replaced over containers that run their own
// process (a rollback undid the replace, or someone wrote it) is no
// replace: a new one is refused rather than taken as done.
func TestReplaceDoesNotTrustAStaleAnnotation(t *testing.T) {
	wc, cs, ref := replaceFixture(t)
	d, _ := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	d.Annotations = map[string]string{ReplacedAnnot: `{"intercept":"web-http","holder":"alice@laptop","image":"agent:1","containers":[{"name":"app","image":"evil:1"}]}`}
	if _, err := cs.AppsV1().Deployments("shop").Update(t.Context(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w, _ := wc.Get(t.Context(), "shop", ref)
	if Replaced(w) != "" {
		t.Error("a workload running its own containers reads as replaced")
	}
	if changed, err := Replace(t.Context(), wc, w, "agent:1", "web-http", "alice@laptop", 0, func(string) {}); !errors.Is(err, ErrReplaced) || changed {
		t.Errorf("replace over a stale annotation: %v, %v", changed, err)
	}
	// Putting back leaves its running container as it is.
	ops, kept := restoreOps(w, &replacement{Image: "agent:1", Containers: []replacedContainer{{Name: "app", Image: "evil:1"}}})
	for _, o := range ops {
		if o["path"] == "/spec/template/spec/containers/0/image" {
			t.Errorf("restore sets the image from the annotation on a container that runs its own: %v (kept %v)", o, kept)
		}
	}
}

// A StatefulSet keeps its pods: a scale down could delete the volumes its
// higher ordinals own.
func TestReplaceDoesNotScaleAStatefulSet(t *testing.T) {
	w := &workload.Workload{Ref: workload.Ref{Kind: workload.StatefulSet, Name: "db"}, Template: corev1.PodTemplateSpec{
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "db:1"}}}}}
	w.Object = asWorkload(t, deployment("x", corev1.Container{Name: "db"})).Object
	ops, err := replaceOps(w, "agent:1", "i", "h")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		if o["path"] == "/spec/replicas" {
			t.Errorf("a StatefulSet scaled: %v", o)
		}
	}
}

// The annotation is anyone's who may edit the workload: whatever it holds,
// reading it and building the put back never panics, and what does not say
// what to put back is refused.
func FuzzReplacedAnnotation(f *testing.F) {
	f.Add(`{"intercept":"i","holder":"h","image":"agent:1","replicas":3,"scaled":true,"containers":[{"name":"app","image":"web:1","command":["/web"]}]}`)
	f.Add(`{"image":"a","containers":[{"name":"app"},{"name":"app"}]}`)
	f.Add(`{"containers":null}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, raw string) {
		w := asWorkload(t, deployment("web", corev1.Container{Name: "app", Image: "agent:1", Command: []string{release.AgentPath}, Args: []string{idleArg}}))
		w.Object.SetAnnotations(map[string]string{ReplacedAnnot: raw})
		rep, err := readReplacement(w)
		if err != nil {
			return
		}
		if rep.Image == "" {
			t.Fatal("a mark without its image was taken")
		}
		_ = Replaced(w)
		ops, _ := restoreOps(w, rep)
		if _, err := json.Marshal(ops); err != nil {
			t.Fatal(err)
		}
	})
}

// A Job or CronJob is replaced by suspending it, its pod template left as
// it is; putting back gives spec.suspend as it was (unset, or false), and
// one its owner resumed meanwhile stays resumed.
func TestReplaceSuspendsAJobOrCronJob(t *testing.T) {
	tmpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "report"}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "report", Image: "report:1"}}}}
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: "shop"},
		Spec: batchv1.CronJobSpec{Schedule: "@daily", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}}}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "backfill", Namespace: "shop"},
		Spec: batchv1.JobSpec{Suspend: ptr.To(false), Template: tmpl}}
	cs := fake.NewClientset(cj, job)
	wc := workload.Client{CS: cs}
	for _, ref := range []workload.Ref{{Kind: workload.CronJob, Name: "nightly"}, {Kind: workload.Job, Name: "backfill"}} {
		w, err := wc.Get(t.Context(), "shop", ref)
		if err != nil {
			t.Fatal(err)
		}
		before := w.Object.DeepCopy()
		if changed, err := Replace(t.Context(), wc, w, "", "nightly-replace", "alice@laptop", time.Second, func(string) {}); !changed || err != nil {
			t.Fatalf("replace %s: %v, %v", ref, changed, err)
		}
		now, _ := wc.Get(t.Context(), "shop", ref)
		if !suspended(now) || Replaced(now) != "nightly-replace" || !equality.Semantic.DeepEqual(now.Template, w.Template) {
			t.Errorf("%s after replace: suspended %v, replaced for %q, template %+v", ref, suspended(now), Replaced(now), now.Template)
		}
		if back, err := Restore(t.Context(), wc, "shop", ref, "nightly-replace", "alice@laptop", time.Second, func(string) {}); !back || err != nil {
			t.Fatalf("restore %s: %v, %v", ref, back, err)
		}
		after, _ := wc.Get(t.Context(), "shop", ref)
		if !equality.Semantic.DeepEqual(after.Object.Object["spec"], before.Object["spec"]) || len(after.Object.GetAnnotations()) != 0 {
			t.Errorf("%s put back: spec %v, annotations %v; want spec %v", ref, after.Object.Object["spec"], after.Object.GetAnnotations(), before.Object["spec"])
		}
	}
	// Resumed by its owner while replaced: left resumed, and said.
	ref := workload.Ref{Kind: workload.Job, Name: "backfill"}
	w, _ := wc.Get(t.Context(), "shop", ref)
	if _, err := Replace(t.Context(), wc, w, "", "x", "alice@laptop", time.Second, func(string) {}); err != nil {
		t.Fatal(err)
	}
	j, _ := cs.BatchV1().Jobs("shop").Get(t.Context(), "backfill", metav1.GetOptions{})
	j.Spec.Suspend = ptr.To(false)
	if _, err := cs.BatchV1().Jobs("shop").Update(t.Context(), j, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var said []string
	if _, err := Restore(t.Context(), wc, "shop", ref, "x", "alice@laptop", time.Second, func(s string) { said = append(said, s) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(said, "\n"), "Left spec.suspend of job shop/backfill as it is now") {
		t.Errorf("a Job resumed meanwhile: said %q", said)
	}
}
