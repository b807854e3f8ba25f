package inject

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
	"tunnel.dev/tunnel/workload"
)

func getService(t *testing.T, cs kubernetes.Interface, name string) *corev1.Service {
	t.Helper()
	s, err := cs.CoreV1().Services("shop").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read service %s: %v", name, err)
	}
	return s
}

// Capturing and then restoring must leave a Service exactly as the user had
// it, whatever annotations it had and however often it was captured.
func TestRetargetRestore(t *testing.T) {
	web := deployment("web", container("app", cport("http", 8080), cport("admin", 9090)))
	tests := []struct {
		name    string
		svc     *corev1.Service
		port    string  // which Service port to capture
		listens []int32 // the sidecar listeners it is pointed at, in turn
	}{
		{name: "no annotations", svc: service("web", "web", sport("http", 80, intstr.FromString("http"))),
			listens: []int32{FirstCapture}},
		{name: "other annotations kept",
			svc:     annotated(service("web", "web", sport("http", 80, intstr.FromInt32(8080))), map[string]string{"team": "shop"}),
			listens: []int32{FirstCapture}},
		{name: "captured twice keeps the original",
			svc:     service("web", "web", sport("http", 80, intstr.FromString("http"))),
			listens: []int32{FirstCapture, FirstCapture + 1}},
		{name: "only the chosen port moves",
			svc:  service("web", "web", sport("http", 80, intstr.FromString("http")), sport("admin", 81, intstr.FromString("admin"))),
			port: "admin", listens: []int32{FirstCapture}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Another workload's capture, which restoring web must leave alone.
			api := annotated(service("api", "api", sport("", 80, intstr.FromInt32(FirstCapture))),
				map[string]string{CapturedAnnot: "80/TCP=8080", WorkloadAnnot: "api"})
			cs := fake.NewClientset(web, tt.svc, api)
			before := getService(t, cs, tt.svc.Name)
			p, err := Resolve(t.Context(), workload.Client{CS: cs}, Target{Namespace: "shop", Workload: "web", Port: tt.port})
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			wantOrig := p.ServicePort.TargetPort
			for _, l := range tt.listens {
				if _, err := retarget(t.Context(), cs, p, l); err != nil {
					t.Fatalf("retarget(%d): %v", l, err)
				}
			}

			mid := getService(t, cs, tt.svc.Name)
			last := tt.listens[len(tt.listens)-1]
			for i, sp := range mid.Spec.Ports {
				want := before.Spec.Ports[i].TargetPort
				if sp.Port == p.ServicePort.Port {
					want = intstr.FromInt32(last)
				}
				if sp.TargetPort != want {
					t.Errorf("after retarget port %d targets %s, want %s", sp.Port, sp.TargetPort.String(), want.String())
				}
			}
			wantAnnot := portKey(p.ServicePort) + "=" + wantOrig.String()
			if mid.Annotations[CapturedAnnot] != wantAnnot || mid.Annotations[WorkloadAnnot] != "web" {
				t.Errorf("after retarget annotations are %v, want %s=%q and %s=web", mid.Annotations, CapturedAnnot, wantAnnot, WorkloadAnnot)
			}
			// What was captured resolves as it did before.
			again, err := Resolve(t.Context(), workload.Client{CS: cs}, Target{Namespace: "shop", Workload: "web", Port: tt.port})
			if err != nil || again.AppPort != p.AppPort {
				t.Errorf("Resolve after retarget = %+v, %v; want app port %d", again, err, p.AppPort)
			}

			restored, err := restoreServices(t.Context(), cs, "shop", "web")
			if err != nil {
				t.Fatalf("restoreServices: %v", err)
			}
			if !slices.Equal(restored, []string{tt.svc.Name}) {
				t.Errorf("restoreServices returned %v, want [%s]", restored, tt.svc.Name)
			}
			after := getService(t, cs, tt.svc.Name)
			if !reflect.DeepEqual(after.Spec, before.Spec) {
				t.Errorf("spec after restore differs:\n got %+v\nwant %+v", after.Spec, before.Spec)
			}
			if !reflect.DeepEqual(after.Annotations, before.Annotations) {
				t.Errorf("annotations after restore = %#v, want %#v", after.Annotations, before.Annotations)
			}
			if a := getService(t, cs, "api"); !reflect.DeepEqual(a.Annotations, api.Annotations) || !reflect.DeepEqual(a.Spec, api.Spec) {
				t.Errorf("restoring web changed service api: %+v", a)
			}
		})
	}
}

func TestRestoreServicesNothingCaptured(t *testing.T) {
	cs := fake.NewClientset(service("web", "web", sport("", 80, intstr.FromInt32(8080))))
	restored, err := restoreServices(t.Context(), cs, "shop", "web")
	if err != nil || len(restored) != 0 {
		t.Errorf("restoreServices with nothing captured = %v, %v; want none", restored, err)
	}
}

func TestSidecarPorts(t *testing.T) {
	slice := func(ports ...int32) []discoveryv1.EndpointSlice {
		var eps []discoveryv1.EndpointPort
		for _, p := range ports {
			eps = append(eps, discoveryv1.EndpointPort{Port: ptr.To(p)})
		}
		return []discoveryv1.EndpointSlice{{Ports: eps}}
	}
	tests := []struct {
		name   string
		slices []discoveryv1.EndpointSlice
		want   bool
	}{
		{name: "none", want: false},
		{name: "app ports", slices: slice(8080, 9090), want: false},
		{name: "metrics", slices: slice(8080, MetricsPort), want: false}, // an app may serve there; the sidecar's is no Service's target
		{name: "capture", slices: slice(FirstCapture + 3), want: true},
		{name: "past the capture range", slices: slice(FirstCapture + 1000), want: false},
		{name: "port unset", slices: []discoveryv1.EndpointSlice{{Ports: []discoveryv1.EndpointPort{{}}}}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sidecarPorts(tt.slices, nil); got != tt.want {
				t.Errorf("sidecarPorts() = %v, want %v", got, tt.want)
			}
		})
	}
	// With the listeners known, an app port in tunnel's range is the app's.
	if sidecarPorts(slice(FirstCapture+343), map[int32]bool{FirstCapture: true}) || !sidecarPorts(slice(8080, FirstCapture), map[int32]bool{FirstCapture: true}) {
		t.Error("sidecarPorts with the listeners known took an app port for the sidecar's, or missed the listener")
	}
}

// Every Service port that leads to the app port is captured, whichever
// one the user named; a headless one on it makes the capture in the pod.
func TestRetargetEveryWayToTheAppPort(t *testing.T) {
	web := deployment("web", container("app", cport("http", 8080), cport("admin", 9090)))
	pub := service("web", "web", sport("http", 80, intstr.FromString("http")), sport("alt", 8080, intstr.FromString("http")), sport("admin", 81, intstr.FromString("admin")))
	internal := service("web-internal", "web", sport("", 9000, intstr.FromInt32(8080)))
	cs := fake.NewClientset(web, pub, internal)
	p, err := Resolve(t.Context(), workload.Client{CS: cs}, Target{Namespace: "shop", Workload: "web", Port: "http"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Service.Name != "web" || p.ServicePort.Port != 80 || len(p.Also) != 2 || p.Redirect {
		t.Fatalf("plan: %s:%d, also %+v, redirect %v; want web:80, also web:8080 and web-internal:9000", p.Service.Name, p.ServicePort.Port, p.Also, p.Redirect)
	}
	if _, err := retarget(t.Context(), cs, p, FirstCapture); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]int32{"web": {FirstCapture, FirstCapture, 9090}, "web-internal": {FirstCapture}} {
		var got []int32
		for _, sp := range getService(t, cs, name).Spec.Ports {
			if sp.TargetPort.Type == intstr.Int {
				got = append(got, sp.TargetPort.IntVal)
			} else {
				got = append(got, 9090) // admin, by name, untouched
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("Service %s targets %v, want %v", name, got, want)
		}
	}
	if restored, err := restoreServices(t.Context(), cs, "shop", "web"); err != nil || len(restored) != 2 {
		t.Errorf("restoreServices = %v, %v", restored, err)
	}
	for _, s := range []*corev1.Service{pub, internal} {
		if after := getService(t, cs, s.Name); !reflect.DeepEqual(after.Spec, s.Spec) || after.Annotations != nil {
			t.Errorf("Service %s after restore: %+v %v", s.Name, after.Spec.Ports, after.Annotations)
		}
	}

	// Named by a port number, a headless Service on the same app port
	// still makes the capture in the pod.
	cs = fake.NewClientset(web, headless(service("web-pods", "web", sport("", 5432, intstr.FromString("http")))), service("web", "web", sport("", 80, intstr.FromString("http"))))
	if p, err := Resolve(t.Context(), workload.Client{CS: cs}, Target{Namespace: "shop", Workload: "web", Port: "80"}); err != nil || !p.Redirect {
		t.Errorf("a headless Service on the named port's app port: %+v, %v; want a redirect", p, err)
	}
}

// A Service port that cannot be pointed at the sidecar leaves none of
// those this call pointed.
func TestRetargetPutsBackWhatItPointedOnFailure(t *testing.T) {
	web := deployment("web", container("app", cport("http", 8080)))
	pub, internal := service("web", "web", sport("", 80, intstr.FromString("http"))), service("web-internal", "web", sport("", 9000, intstr.FromInt32(8080)))
	cs := fake.NewClientset(web, pub, internal)
	p, err := Resolve(t.Context(), workload.Client{CS: cs}, Target{Namespace: "shop", Workload: "web"})
	if err != nil || len(p.Also) != 1 {
		t.Fatalf("plan: %+v, %v", p, err)
	}
	cs.PrependReactor("update", "services", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.UpdateAction).GetObject().(*corev1.Service).Name == p.Also[0].Service.Name {
			return true, nil, errors.New("forbidden")
		}
		return false, nil, nil
	})
	if _, err := retarget(t.Context(), cs, p, FirstCapture); err == nil {
		t.Fatal("retarget went through a refused update")
	}
	for _, s := range []*corev1.Service{pub, internal} {
		if after := getService(t, cs, s.Name); !reflect.DeepEqual(after.Spec, s.Spec) || after.Annotations != nil {
			t.Errorf("Service %s after a failed retarget: %+v %v", s.Name, after.Spec.Ports, after.Annotations)
		}
	}
}
