package inject

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"fmt"
	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/workload"
)

func sidecar(args ...string) corev1.Container {
	return corev1.Container{Name: Container, Image: "tunnel:v1", Args: args}
}

func TestCaptures(t *testing.T) {
	tests := []struct {
		name string
		d    *appsv1.Deployment
		want map[int32]int32
	}{
		{name: "no sidecar", d: deployment("web", container("app")), want: map[int32]int32{}},
		{name: "two captures",
			d: deployment("web", container("app"),
				sidecar("sidecar", "--workload", "web", "--capture", "18100=8080", "--capture", "18101=9090")),
			want: map[int32]int32{8080: 18100, 9090: 18101}},
		{name: "trailing --capture without value",
			d:    deployment("web", container("app"), sidecar("sidecar", "--capture", "18100=8080", "--capture")),
			want: map[int32]int32{8080: 18100}},
		{name: "other containers' args are not the sidecar's",
			d:    deployment("web", corev1.Container{Name: "app", Args: []string{"--capture", "1=2"}}),
			want: map[int32]int32{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Captures(&tt.d.Spec.Template); !maps.Equal(got, tt.want) {
				t.Errorf("Captures() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFreePort(t *testing.T) {
	tests := []struct {
		name string
		d    *appsv1.Deployment
		caps map[int32]int32
		want int32
	}{
		{name: "first", d: deployment("web", container("app", cport("http", 8080))), want: FirstCapture},
		{name: "declared by a container",
			d: deployment("web", container("app", cport("a", FirstCapture)), container("b", cport("b", FirstCapture+1))), want: FirstCapture + 2},
		{name: "used by a capture", d: deployment("web", container("app")),
			caps: map[int32]int32{8080: FirstCapture}, want: FirstCapture + 1},
		// The app port of a capture is a port the pod listens on too.
		{name: "app port of a capture", d: deployment("web", container("app")),
			caps: map[int32]int32{FirstCapture: FirstCapture + 1}, want: FirstCapture + 2},
		{name: "gap is reused", d: deployment("web", container("app", cport("x", FirstCapture+1))),
			caps: map[int32]int32{8080: FirstCapture + 2}, want: FirstCapture},
	}
	// The new app port, undeclared (a Service's numeric targetPort).
	if got := freePort(&deployment("web", container("app")).Spec.Template, nil, FirstCapture); got != FirstCapture+1 {
		t.Errorf("freePort avoiding the app's undeclared port %d = %d", FirstCapture, got)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps := maps.Clone(tt.caps)
			if got := freePort(&tt.d.Spec.Template, caps); got != tt.want {
				t.Errorf("freePort() = %d, want %d", got, tt.want)
			}
			if !maps.Equal(caps, tt.caps) {
				t.Errorf("freePort changed caps to %v", caps)
			}
		})
	}
}

// reviewer answers SelfSubjectAccessReviews: allowed unless "verb resource"
// is in deny.
func reviewer(t *testing.T, cs *fake.Clientset, deny ...string) {
	t.Helper()
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		rev := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview).DeepCopy()
		ra := rev.Spec.ResourceAttributes
		if ra == nil || ra.Namespace != "shop" {
			t.Errorf("access review for %+v, want one in namespace shop", ra)
			return true, rev, nil
		}
		rev.Status.Allowed = !slices.Contains(deny, ra.Verb+" "+ra.Resource)
		return true, rev, nil
	})
}

func TestCheckAccess(t *testing.T) {
	tests := []struct {
		name    string
		deny    []string
		wantMsg []string
		notMsg  []string
	}{
		{name: "allowed"},
		{name: "no patch on deployments", deny: []string{"patch deployments"},
			wantMsg: []string{"patch deployments.apps", "namespace shop"}, notMsg: []string{"get deployments", "services"}},
		{name: "services", deny: []string{"list services", "update services"},
			wantMsg: []string{"list services, update services", "namespace shop"}, notMsg: []string{"deployments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset()
			reviewer(t, cs, tt.deny...)
			err := CheckAccess(t.Context(), cs, "shop", workload.Deployment, false)
			if len(tt.deny) == 0 {
				if err != nil {
					t.Fatalf("CheckAccess with nothing denied: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrForbidden) {
				t.Fatalf("CheckAccess denying %v = %v, want %v", tt.deny, err, ErrForbidden)
			}
			for _, s := range tt.wantMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			for _, s := range tt.notMsg {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q mentions %q, which was allowed", err, s)
				}
			}
		})
	}
}

// An API server that cannot answer is not a denial: the user must see why.
func TestCheckAccessAPIError(t *testing.T) {
	cs := fake.NewClientset()
	boom := errors.New("connection refused")
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, boom
	})
	err := CheckAccess(t.Context(), cs, "shop", workload.Deployment, false)
	if !errors.Is(err, boom) || errors.Is(err, ErrForbidden) {
		t.Fatalf("CheckAccess = %v, want it to wrap %v and not %v", err, boom, ErrForbidden)
	}
}

func TestWithSidecar(t *testing.T) {
	with := deployment("web", container("app"), sidecar("sidecar"))
	other := deployment("api", container("app"), sidecar("sidecar"))
	other.Namespace = "other"
	cs := fake.NewClientset(with, other, deployment("db", container("db")))
	tests := []struct {
		ns   string
		want []string
	}{
		{ns: "shop", want: []string{"web"}},
		{ns: "", want: []string{"api", "web"}},
		{ns: "empty", want: nil},
	}
	for _, tt := range tests {
		ds, err := WithSidecar(t.Context(), workload.Client{CS: cs}, tt.ns)
		if err != nil {
			t.Fatalf("WithSidecar(%q): %v", tt.ns, err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("WithSidecar(%q) = %v, want %v", tt.ns, got, tt.want)
		}
	}
}

// The sidecar is applied under its own field manager, so applying nothing
// takes it out again and leaves the user's containers as they were.
func TestApplyAndRemoveSidecar(t *testing.T) {
	d := deployment("web", container("app", cport("http", 8080)))
	d.Spec.Template.Annotations = map[string]string{"team": "shop"}
	d.Spec.Template.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "team-pull"}}
	cs := fake.NewClientset(d)
	wc := workload.Client{CS: cs}
	w, err := wc.Get(t.Context(), "shop", workload.Ref{Kind: workload.Deployment, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	caps := map[int32]int32{9090: FirstCapture + 1, 8080: FirstCapture}
	if err := applySidecar(t.Context(), wc, w, Agent{Image: "tunnel:v2", PullSecrets: []string{"agent-pull"}}, caps, map[int32]bool{9090: true}); err != nil {
		t.Fatalf("applySidecar: %v", err)
	}
	got, err := cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !HasSidecar(&got.Spec.Template) {
		t.Fatalf("after applySidecar the pod template has containers %v, want %s among them", containerNames(got), Container)
	}
	if c := Captures(&got.Spec.Template); !maps.Equal(c, caps) {
		t.Errorf("Captures after applySidecar = %v, want %v", c, caps)
	}
	if r := Redirects(&got.Spec.Template); !maps.Equal(r, map[int32]bool{9090: true}) || len(got.Spec.Template.Spec.InitContainers) != 1 ||
		!slices.Equal(got.Spec.Template.Spec.InitContainers[0].Args, []string{"redirect", "--port", fmt.Sprintf("9090=%d", FirstCapture+1)}) {
		t.Errorf("the redirect after applySidecar: %v, %+v", r, got.Spec.Template.Spec.InitContainers)
	}
	if s := pullSecretNames(got); !slices.Equal(s, []string{"team-pull", "agent-pull"}) {
		t.Errorf("pull secrets after applySidecar: %v", s)
	}
	if err := wc.Apply(t.Context(), w, nil, FieldManager, owned()); err != nil {
		t.Fatalf("removeSidecar: %v", err)
	}
	got, err = cs.AppsV1().Deployments("shop").Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if HasSidecar(&got.Spec.Template) || len(got.Spec.Template.Spec.InitContainers) != 0 || !slices.Equal(containerNames(got), []string{"app"}) {
		t.Errorf("after removeSidecar the containers are %v, want [app]", containerNames(got))
	}
	if got.Spec.Template.Annotations["team"] != "shop" {
		t.Errorf("removeSidecar lost the user's template annotations: %v", got.Spec.Template.Annotations)
	}
	if s := pullSecretNames(got); !slices.Equal(s, []string{"team-pull"}) {
		t.Errorf("pull secrets after removeSidecar: %v, want the workload's own", s)
	}
}

func pullSecretNames(d *appsv1.Deployment) []string {
	var out []string
	for _, s := range d.Spec.Template.Spec.ImagePullSecrets {
		out = append(out, s.Name)
	}
	return out
}

func containerNames(d *appsv1.Deployment) []string {
	var out []string
	for _, c := range d.Spec.Template.Spec.Containers {
		out = append(out, c.Name)
	}
	return out
}

func TestWithoutAndOriginalPorts(t *testing.T) {
	tmpl := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app"}, {Name: Container}},
		Volumes:    []corev1.Volume{{Name: "data"}, {Name: tokenVolume}},
	}}
	got := Without(tmpl)
	if len(got.Spec.Containers) != 1 || got.Spec.Containers[0].Name != "app" || len(got.Spec.Volumes) != 1 || got.Spec.Volumes[0].Name != "data" {
		t.Errorf("Without = %+v", got.Spec)
	}
	if len(tmpl.Spec.Containers) != 2 {
		t.Error("Without changed its argument")
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{CapturedAnnot: "80/TCP=http"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Port: 80, TargetPort: intstr.FromInt32(FirstCapture)},
			{Port: 9000, TargetPort: intstr.FromInt32(9000)},
		}},
	}
	ports := OriginalPorts(svc)
	if ports[0].TargetPort.String() != "http" || ports[1].TargetPort.IntValue() != 9000 || svc.Spec.Ports[0].TargetPort.IntValue() != FirstCapture {
		t.Errorf("OriginalPorts = %+v", ports)
	}
}

func TestCheckPullSecrets(t *testing.T) {
	cs := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "pull", Namespace: "shop"}})
	if err := CheckPullSecrets(t.Context(), cs, "shop", Agent{PullSecrets: []string{"pull"}}); err != nil {
		t.Errorf("a namespace with the secret: %v", err)
	}
	err := CheckPullSecrets(t.Context(), cs, "blog", Agent{PullSecrets: []string{"pull"}})
	if err == nil || !strings.Contains(err.Error(), "namespace blog has no Secret pull") {
		t.Errorf("a namespace without it: %v", err)
	}
	if err := CheckPullSecrets(t.Context(), cs, "blog", Agent{}); err != nil {
		t.Errorf("no pull secrets to check: %v", err)
	}
}

// The sidecar's metrics port is not one an app's container declares, nor
// an app port it captures, and once chosen it stays with the sidecar.
func TestMetricsPortAvoidsTheApps(t *testing.T) {
	tmpl := func(cs ...corev1.Container) *corev1.PodTemplateSpec {
		return &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: cs}}
	}
	for _, tc := range []struct {
		name  string
		t     *corev1.PodTemplateSpec
		caps  map[int32]int32
		avoid []int32
		want  int32
	}{
		{"free", tmpl(container("app", cport("http", 8080))), map[int32]int32{8080: FirstCapture}, nil, MetricsPort},
		// 18098 is the sidecar's own direct port.
		{"declared by the app", tmpl(container("app", cport("http", MetricsPort), cport("admin", MetricsPort-2))), nil, nil, MetricsPort - 3},
		{"captured, undeclared", tmpl(container("app")), map[int32]int32{MetricsPort: FirstCapture}, nil, MetricsPort - 2},
		{"a Service's app port, undeclared", tmpl(container("app")), map[int32]int32{8080: FirstCapture}, []int32{8080, MetricsPort}, MetricsPort - 2},
		{"kept from the sidecar", tmpl(container("app", cport("http", 8080)),
			corev1.Container{Name: Container, Args: []string{"sidecar", "--metrics-addr", ":18050"}}), nil, []int32{18050}, 18050},
	} {
		if got := metricsPort(tc.t, tc.caps, tc.avoid...); got != tc.want || got == rpc.SidecarDirectPort {
			t.Errorf("%s: metricsPort = %d, want %d", tc.name, got, tc.want)
		}
	}
}
