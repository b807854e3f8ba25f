package workload

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func tmpl(app string, containers ...string) corev1.PodTemplateSpec {
	t := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}}}
	for _, c := range containers {
		t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: c, Image: c + ":1"})
	}
	return t
}

func meta(name string, uid types.UID, owner ...metav1.OwnerReference) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "shop", UID: uid, OwnerReferences: owner}
}

func controller(kind, name string, uid types.UID) metav1.OwnerReference {
	return metav1.OwnerReference{Kind: kind, Name: name, UID: uid, Controller: ptr.To(true)}
}

func selector(app string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
}

func service(name string, sel map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: meta(name, ""), Spec: corev1.ServiceSpec{Selector: sel}}
}

func argoRollout(name string, uid types.UID, t corev1.PodTemplateSpec) *unstructured.Unstructured {
	tm, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(&t)
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
		"metadata": map[string]any{"name": name, "namespace": "shop", "uid": string(uid)},
		"spec":     map[string]any{"template": tm, "selector": map[string]any{"matchLabels": map[string]any{"app": t.Labels["app"]}}},
	}}
	return u
}

// cluster has one workload of every kind, a ReplicaSet a Deployment runs,
// and Services in front of them.
func cluster(t *testing.T, extra ...runtime.Object) Client {
	t.Helper()
	objs := append([]runtime.Object{
		&appsv1.Deployment{ObjectMeta: meta("web", "d-web"), Spec: appsv1.DeploymentSpec{Selector: selector("web"), Template: tmpl("web", "app")}},
		&appsv1.ReplicaSet{ObjectMeta: meta("web-1", "rs-web-1", controller(Deployment, "web", "d-web")),
			Spec: appsv1.ReplicaSetSpec{Selector: selector("web"), Template: tmpl("web", "app")}},
		&appsv1.StatefulSet{ObjectMeta: meta("db", "ss-db"), Spec: appsv1.StatefulSetSpec{Selector: selector("db"), Template: tmpl("db", "db")}},
		&appsv1.DaemonSet{ObjectMeta: meta("agent", "ds-agent"), Spec: appsv1.DaemonSetSpec{Selector: selector("agent"), Template: tmpl("agent", "agent")}},
		&appsv1.ReplicaSet{ObjectMeta: meta("plain", "rs-plain"), Spec: appsv1.ReplicaSetSpec{Selector: selector("plain"), Template: tmpl("plain", "app")}},
		// A Deployment and a StatefulSet of one name.
		&appsv1.Deployment{ObjectMeta: meta("twin", "d-twin"), Spec: appsv1.DeploymentSpec{Selector: selector("twin-d"), Template: tmpl("twin-d", "app")}},
		&appsv1.StatefulSet{ObjectMeta: meta("twin", "ss-twin"), Spec: appsv1.StatefulSetSpec{Selector: selector("twin-s"), Template: tmpl("twin-s", "app")}},
		service("web-svc", map[string]string{"app": "web"}),
		service("db-svc", map[string]string{"app": "db"}),
		service("manual", nil),
		service("nobody", map[string]string{"app": "gone"}),
	}, extra...)
	lists := map[schema.GroupVersionResource]string{Kinds()[4].Resource: "RolloutList"}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), lists, argoRollout("shop", "ro-shop", tmpl("shop", "app")))
	return Client{CS: fake.NewClientset(objs...), Dyn: dyn}
}

func TestParseRef(t *testing.T) {
	for in, want := range map[string]Ref{
		"web":                    {Deployment, "web"},
		"deploy/web":             {Deployment, "web"},
		"sts/db":                 {StatefulSet, "db"},
		"statefulsets.apps/db":   {StatefulSet, "db"},
		"DaemonSet/agent":        {DaemonSet, "agent"},
		"rs/plain":               {ReplicaSet, "plain"},
		"rollouts.argoproj.io/a": {Rollout, "a"},
	} {
		got, err := ParseRef(in)
		if err != nil || got != want {
			t.Errorf("ParseRef(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, _ := ParseRef(got.String()); back != want {
			t.Errorf("%q does not read back: %q", in, got.String())
		}
	}
	if got := (Ref{Deployment, "web"}).String(); got != "web" {
		t.Errorf("a Deployment's ref is %q, want its bare name, as sidecars of older versions carry", got)
	}
	for _, bad := range []string{"pod/x", "sts/", "sts/a/b"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) took it", bad)
		}
	}
}

func TestFind(t *testing.T) {
	c := cluster(t)
	for _, tc := range []struct{ name, kind, wname, service, err string }{
		{name: "web", kind: Deployment, wname: "web"},
		{name: "sts/db", kind: StatefulSet, wname: "db"},
		{name: "db", kind: StatefulSet, wname: "db"},
		{name: "agent", kind: DaemonSet, wname: "agent"},
		{name: "plain", kind: ReplicaSet, wname: "plain"},
		{name: "shop", kind: Rollout, wname: "shop"},
		{name: "db-svc", kind: StatefulSet, wname: "db", service: "db-svc"},
		{name: "web-svc", kind: Deployment, wname: "web", service: "web-svc"},
		{name: "twin", err: "deployment/twin, statefulset/twin are all named twin in namespace shop; say which, as deployment/twin"},
		{name: "sts/twin", kind: StatefulSet, wname: "twin"},
		{name: "rs/web-1", err: "replicaset shop/web-1 is run by deployment web, which would undo any change to it; intercept deployment/web"},
		{name: "web-1", err: "there is no workload or Service named \"web-1\""},
		{name: "manual", err: "Service shop/manual has no selector"},
		{name: "nobody", err: "picks the pods of no Deployment"},
		{name: "cronjob/x", err: "there is no CronJob \"x\" in namespace shop"},
		{name: "pod/x", err: "\"pod\" is not a workload kind tunnel intercepts (deployment, statefulset"},
		{name: "sts/none", err: "there is no StatefulSet \"none\" in namespace shop"},
	} {
		w, svc, err := c.Find(t.Context(), "shop", tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Find(%q) = %v, want an error saying %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || w.Kind != tc.kind || w.Name != tc.wname || svc != tc.service || w.Template.Labels["app"] == "" {
			t.Errorf("Find(%q) = %+v, %q, %v; want %s %s behind %q", tc.name, w, svc, err, tc.kind, tc.wname, tc.service)
		}
	}
}

func TestBehindServiceOfSeveral(t *testing.T) {
	c := cluster(t, &appsv1.StatefulSet{ObjectMeta: meta("cache", "ss-cache"),
		Spec: appsv1.StatefulSetSpec{Selector: selector("web"), Template: tmpl("web", "cache")}})
	_, _, err := c.Find(t.Context(), "shop", "web-svc")
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "selects the pods of deployment/web, statefulset/cache") {
		t.Errorf("a Service in front of two workloads: %v", err)
	}
}

func TestBehindServiceOfJobs(t *testing.T) {
	jobTmpl := func(app string) batchv1.JobSpec { return batchv1.JobSpec{Template: tmpl(app, "report")} }
	c := cluster(t,
		&batchv1.CronJob{ObjectMeta: meta("nightly", "cj-nightly"), Spec: batchv1.CronJobSpec{Schedule: "@daily",
			JobTemplate: batchv1.JobTemplateSpec{Spec: jobTmpl("report")}}},
		// The CronJob's own Job is named by the CronJob, not again.
		&batchv1.Job{ObjectMeta: meta("nightly-1", "j-nightly-1", controller("CronJob", "nightly", "cj-nightly")), Spec: jobTmpl("report")},
		&batchv1.Job{ObjectMeta: meta("once", "j-once"), Spec: jobTmpl("report")},
		&batchv1.Job{ObjectMeta: meta("other", "j-other"), Spec: jobTmpl("other")},
		// Named as a Deployment is: a bare name finds the Deployment.
		&batchv1.CronJob{ObjectMeta: meta("web", "cj-web"), Spec: batchv1.CronJobSpec{Schedule: "@daily",
			JobTemplate: batchv1.JobTemplateSpec{Spec: jobTmpl("cleanup")}}},
		service("report", map[string]string{"app": "report"}))
	_, _, err := c.Find(t.Context(), "shop", "report")
	if !errors.Is(err, ErrNoPodsFor) || !strings.Contains(err.Error(), "Service shop/report selects the pods of cronjob/nightly, job/once, and tunnel intercepts") {
		t.Errorf("a Service in front of Jobs: %v", err)
	}
	if !strings.Contains(err.Error(), "`tunnel intercept cronjob/nightly --replace` suspends it") {
		t.Errorf("the refusal does not say what tunnel does with a CronJob: %v", err)
	}
	// Named, each is found, its pod template read from where its kind
	// keeps it; a bare name finds one too.
	for name, want := range map[string]Ref{"cronjob/nightly": {CronJob, "nightly"}, "cj/nightly": {CronJob, "nightly"},
		"jobs.batch/once": {Job, "once"}, "once": {Job, "once"}, "nightly": {CronJob, "nightly"}} {
		w, _, err := c.Find(t.Context(), "shop", name)
		if err != nil || w.Ref != want || w.Template.Labels["app"] != "report" {
			t.Errorf("Find(%q) = %+v, %v; want %v with its template", name, w, err, want)
		}
	}
	if w, _, err := c.Find(t.Context(), "shop", "web"); err != nil || w.Kind != Deployment {
		t.Errorf("Find(\"web\") beside cronjob/web = %+v, %v; want the Deployment", w, err)
	}
	if k, ok := KindNamed(""); ok {
		t.Errorf("KindNamed(\"\") = %v: a kind without a short name must not match an empty one", k)
	}
	// Without Jobs behind it, the sentence stays the general one.
	if _, _, err := c.Find(t.Context(), "shop", "nobody"); err == nil || strings.Contains(err.Error(), "job") {
		t.Errorf("a Service in front of nothing: %v", err)
	}
}

func TestList(t *testing.T) {
	ws, err := cluster(t).List(t.Context(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range ws {
		got = append(got, w.Ref.String())
	}
	want := "twin web statefulset/db statefulset/twin daemonset/agent replicaset/plain rollout/shop"
	if strings.Join(got, " ") != want {
		t.Errorf("List = %v, want %s (no ReplicaSet a Deployment runs)", got, want)
	}
	// Without the dynamic client (or Argo), Rollouts are not there.
	ws, err = Client{CS: cluster(t).CS}.List(t.Context(), "shop")
	if err != nil || len(ws) != 6 {
		t.Errorf("List without a dynamic client: %d, %v", len(ws), err)
	}
}

func TestPodTemplate(t *testing.T) {
	withSidecar := tmpl("db", "db", "tunnel-agent")
	rev := func(name string, uid types.UID, owner types.UID, t corev1.PodTemplateSpec) *appsv1.ControllerRevision {
		data, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": t}})
		return &appsv1.ControllerRevision{ObjectMeta: meta(name, uid, controller(StatefulSet, "db", owner)), Data: runtime.RawExtension{Raw: data}}
	}
	pod := func(name string, labels map[string]string, owner metav1.OwnerReference) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: labels, OwnerReferences: []metav1.OwnerReference{owner}}}
	}
	shopRS := meta("shop-1", "rs-shop-1", controller(Rollout, "shop", "ro-shop"))
	shopRS.Labels = map[string]string{rolloutTemplateHash: "h1"}
	c := cluster(t,
		rev("db-abc", "cr-1", "ss-db", withSidecar), rev("db-forged", "cr-f", "someone-else", withSidecar),
		&appsv1.ReplicaSet{ObjectMeta: shopRS, Spec: appsv1.ReplicaSetSpec{Template: tmpl("shop", "app", "tunnel-agent")}},
	)

	for _, tc := range []struct {
		what string
		pod  *corev1.Pod
		ref  Ref
		want string // a container the template has, or the error
	}{
		{"a StatefulSet's pod", pod("db-0", map[string]string{revisionLabel: "db-abc"}, controller(StatefulSet, "db", "ss-db")), Ref{StatefulSet, "db"}, "tunnel-agent"},
		{"a revision another object controls", pod("db-1", map[string]string{revisionLabel: "db-forged"}, controller(StatefulSet, "db", "ss-db")), Ref{StatefulSet, "db"}, "names revision db-forged, which statefulset shop/db does not have"},
		{"an earlier StatefulSet's pod", pod("db-2", map[string]string{revisionLabel: "db-abc"}, controller(StatefulSet, "db", "ss-old")), Ref{StatefulSet, "db"}, "belongs to an earlier statefulset shop/db"},
		{"a pod of another workload", pod("db-3", nil, controller(StatefulSet, "db", "ss-db")), Ref{StatefulSet, "cache"}, "does not belong to statefulset shop/cache"},
		{"a bare ReplicaSet's pod", pod("plain-x", nil, controller(ReplicaSet, "plain", "rs-plain")), Ref{ReplicaSet, "plain"}, "app"},
		{"a Deployment's ReplicaSet is not a bare one", pod("web-1-x", nil, controller(ReplicaSet, "web-1", "rs-web-1")), Ref{ReplicaSet, "web-1"}, "does not belong to replicaset shop/web-1"},
		{"a Rollout's pod", pod("shop-1-x", map[string]string{rolloutTemplateHash: "h1"}, controller(ReplicaSet, "shop-1", "rs-shop-1")), Ref{Rollout, "shop"}, "tunnel-agent"},
		{"a Rollout's pod of another hash", pod("shop-1-y", map[string]string{rolloutTemplateHash: "h2"}, controller(ReplicaSet, "shop-1", "rs-shop-1")), Ref{Rollout, "shop"}, "was not made by ReplicaSet shop-1"},
		{"a ReplicaSet of that name made again", pod("plain-y", nil, controller(ReplicaSet, "plain", "rs-earlier")), Ref{ReplicaSet, "plain"}, "was not made by ReplicaSet plain"},
	} {
		got, _, err := c.PodTemplate(t.Context(), "shop", tc.pod, tc.ref)
		has := err == nil && func() bool {
			for _, ct := range got.Spec.Containers {
				if ct.Name == tc.want {
					return true
				}
			}
			return false
		}()
		if !has && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: PodTemplate = %v, %v; want %q", tc.what, got, err, tc.want)
		}
	}
}

func TestOwner(t *testing.T) {
	c := cluster(t)
	for _, tc := range []struct {
		owner metav1.OwnerReference
		want  Ref
		uid   types.UID
	}{
		{controller(ReplicaSet, "web-1", "rs-web-1"), Ref{Deployment, "web"}, "d-web"},
		{controller(ReplicaSet, "plain", "rs-plain"), Ref{ReplicaSet, "plain"}, "rs-plain"},
		{controller(ReplicaSet, "plain", "rs-other"), Ref{}, ""},
		{controller(StatefulSet, "db", "ss-db"), Ref{StatefulSet, "db"}, "ss-db"},
		{controller("Job", "migrate", "j-1"), Ref{}, ""},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", OwnerReferences: []metav1.OwnerReference{tc.owner}}}
		if got, uid := c.Owner(t.Context(), pod); got != tc.want || uid != tc.uid {
			t.Errorf("Owner of a pod run by %s %s = %v %s, want %v %s", tc.owner.Kind, tc.owner.Name, got, uid, tc.want, tc.uid)
		}
	}
}

func TestApplied(t *testing.T) {
	own := Owned{Containers: []string{"tunnel-agent", "tunnel-redirect"}, Volumes: []string{"tunnel-token"}}
	withVolumes := func(t corev1.PodTemplateSpec, names ...string) corev1.PodTemplateSpec {
		for _, n := range names {
			t.Spec.Volumes = append(t.Spec.Volumes, corev1.Volume{Name: n})
		}
		return t
	}
	before := withVolumes(tmpl("x", "app", "log"), "config")
	frag := withVolumes(tmpl("x", "tunnel-agent"), "tunnel-token")
	good := withVolumes(tmpl("x", "app", "log", "tunnel-agent"), "config", "tunnel-token")
	for _, tc := range []struct {
		what        string
		after, frag corev1.PodTemplateSpec
		want        bool
	}{
		{"the sidecar and its volume added", good, frag, true},
		{"a list taken as one value: the workload's volumes gone", withVolumes(tmpl("x", "app", "log", "tunnel-agent"), "tunnel-token"), frag, false},
		{"a list taken as one value: the workload's containers gone", withVolumes(tmpl("x", "tunnel-agent"), "config", "tunnel-token"), frag, false},
		{"taken out again", before, corev1.PodTemplateSpec{}, true},
		{"taken out by nothing (an update made them)", good, corev1.PodTemplateSpec{}, false},
	} {
		if got := applied(&before, &tc.after, &tc.frag, own); got != tc.want {
			t.Errorf("%s: applied = %v, want %v", tc.what, got, tc.want)
		}
	}
}

// A kind changed by update keeps the workload's own lists and pull secrets
// and gets back exactly what it had once tunnel's parts are taken out.
func TestUpdatePath(t *testing.T) {
	c := cluster(t)
	w, err := c.Get(t.Context(), "shop", Ref{Rollout, "shop"})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedSlice(w.Object.Object, []any{map[string]any{"name": "config"}}, "spec", "template", "spec", "volumes")
	_ = unstructured.SetNestedSlice(w.Object.Object, []any{map[string]any{"name": "team"}}, "spec", "template", "spec", "imagePullSecrets")
	if _, err := c.Dyn.Resource(Kinds()[4].Resource).Namespace("shop").Update(t.Context(), w.Object, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	original, _ := c.Get(t.Context(), "shop", Ref{Rollout, "shop"})
	own := Owned{Containers: []string{"tunnel-agent"}, Volumes: []string{"tunnel-token"}}
	frag := map[string]any{
		"containers":       []corev1.Container{{Name: "tunnel-agent", Image: "agent:1"}},
		"volumes":          []corev1.Volume{{Name: "tunnel-token"}},
		"imagePullSecrets": []corev1.LocalObjectReference{{Name: "team"}, {Name: "agent"}},
	}
	k, _ := KindNamed(Rollout)
	var spec corev1.PodSpec
	_ = convert(frag, &spec)
	for range 2 { // twice: the second finds its parts there already
		if err := c.update(t.Context(), k, original, frag, &spec, "tunnel-intercept", own); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := c.Get(t.Context(), "shop", Ref{Rollout, "shop"})
	var names []string
	for _, x := range got.Template.Spec.Containers {
		names = append(names, x.Name)
	}
	for _, v := range got.Template.Spec.Volumes {
		names = append(names, v.Name)
	}
	for _, s := range got.Template.Spec.ImagePullSecrets {
		names = append(names, s.Name)
	}
	if strings.Join(names, " ") != "app tunnel-agent config tunnel-token team agent" || got.Object.GetAnnotations()[AddedSecretsAnnot] != "agent" {
		t.Errorf("after the update: %v, %v", names, got.Object.GetAnnotations())
	}
	if err := c.update(t.Context(), k, original, nil, &corev1.PodSpec{}, "tunnel-intercept", own); err != nil {
		t.Fatal(err)
	}
	back, _ := c.Get(t.Context(), "shop", Ref{Rollout, "shop"})
	if !equality.Semantic.DeepEqual(back.Object.Object["spec"], original.Object.Object["spec"]) || len(back.Object.GetAnnotations()) != 0 {
		t.Errorf("taken out, the Rollout is\n%v\nnot\n%v", back.Object.Object, original.Object.Object)
	}
}

func TestPartial(t *testing.T) {
	w := &Workload{Ref: Ref{StatefulSet, "db"}, Namespace: "shop", Object: &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{"updateStrategy": map[string]any{"rollingUpdate": map[string]any{"partition": int64(2)}}}}}}
	if got := Partial(w); !strings.Contains(got, "only its pods from ordinal 2 on") {
		t.Errorf("Partial of a partitioned StatefulSet = %q", got)
	}
	w.Object.Object["spec"] = map[string]any{}
	if got := Partial(w); got != "" {
		t.Errorf("Partial of a plain StatefulSet = %q", got)
	}
}
