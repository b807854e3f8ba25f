package inject

import (
	"errors"
	"maps"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"tunnel.dev/tunnel/workload"
)

// deployment is a Deployment in namespace "shop" whose pods carry app=name.
func deployment(name string, containers ...corev1.Container) *appsv1.Deployment {
	lbl := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec:       corev1.PodSpec{Containers: containers},
			},
		},
	}
}

// asWorkload reads d as the workload package does.
func asWorkload(t *testing.T, d *appsv1.Deployment) *workload.Workload {
	t.Helper()
	w, err := workload.Client{CS: fake.NewClientset(d)}.Get(t.Context(), d.Namespace, workload.Ref{Kind: workload.Deployment, Name: d.Name})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func container(name string, ports ...corev1.ContainerPort) corev1.Container {
	return corev1.Container{Name: name, Image: name + ":v1", Ports: ports}
}

func cport(name string, n int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: n, Protocol: corev1.ProtocolTCP}
}

// service is a ClusterIP Service in "shop" selecting the pods of app.
func service(name, app string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec: corev1.ServiceSpec{
			Selector:  map[string]string{"app": app},
			ClusterIP: "10.96.0.10",
			Ports:     ports,
		},
	}
}

func sport(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
}

func headless(s *corev1.Service) *corev1.Service {
	s.Spec.ClusterIP = corev1.ClusterIPNone
	return s
}

func annotated(s *corev1.Service, annots map[string]string) *corev1.Service {
	s.Annotations = annots
	return s
}

func restricted() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}
}

func TestResolve(t *testing.T) {
	web := deployment("web",
		container("app", cport("http", 8080), cport("admin", 9090)),
		// A sidecar already in place: its ports must not be taken for the app's.
		container(Container, cport("tunnel-metrics", MetricsPort), cport("tnl-8080", FirstCapture)))
	http := sport("http", 80, intstr.FromString("http"))
	admin := sport("admin", 81, intstr.FromInt32(9090))
	dns := corev1.ServicePort{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP}

	// Blue and green behind one Service, and a Service of blue's alone.
	labelled := func(d *appsv1.Deployment, lbl map[string]string) *appsv1.Deployment {
		d.Spec.Selector.MatchLabels, d.Spec.Template.Labels = lbl, lbl
		return d
	}
	blue := labelled(deployment("web", container("app", cport("http", 8080))), map[string]string{"app": "web", "color": "blue"})
	green := labelled(deployment("web-green", container("app", cport("http", 8080))), map[string]string{"app": "web", "color": "green"})
	blueOnly := service("web-blue", "web", http)
	blueOnly.Spec.Selector = map[string]string{"app": "web", "color": "blue"}
	onHost := deployment("web", container("app", cport("http", 8080)))
	onHost.Spec.Template.Spec.HostNetwork = true

	tests := []struct {
		name          string
		objs          []runtime.Object
		target        Target // Namespace "shop" and Workload "web" unless set
		wantErr       error
		wantMsg       []string // substrings of the error
		wantService   string
		wantPort      int32 // the Service port chosen
		wantApp       int32
		wantContainer string
		wantRedirect  bool
		wantWarning   string
	}{
		{name: "unknown deployment", objs: []runtime.Object{web}, target: Target{Workload: "nope"},
			wantErr: ErrNoWorkload, wantMsg: []string{`"nope"`, "shop"}},
		{name: "no service", objs: []runtime.Object{web},
			wantErr: ErrNoService, wantMsg: []string{"web", "shop"}},
		{name: "service selects other pods", objs: []runtime.Object{web, service("api", "api", http)},
			wantErr: ErrNoService},
		{name: "service without selector", objs: []runtime.Object{web, service("ext", "", http)},
			wantErr: ErrNoService},
		{name: "one port needs no name", objs: []runtime.Object{web, service("web", "web", sport("", 80, intstr.FromInt32(8080)))},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
		{name: "named targetPort", objs: []runtime.Object{web, service("web", "web", http)},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
		{name: "numeric targetPort no container declares", objs: []runtime.Object{web, service("web", "web", sport("", 80, intstr.FromInt32(7000)))},
			wantService: "web", wantPort: 80, wantApp: 7000, wantContainer: ""},
		{name: "unset targetPort is the port", objs: []runtime.Object{web, service("web", "web", sport("", 9090, intstr.IntOrString{}))},
			wantService: "web", wantPort: 9090, wantApp: 9090, wantContainer: "app"},
		{name: "named targetPort no container declares", objs: []runtime.Object{web, service("web", "web", sport("", 80, intstr.FromString("grpc")))},
			wantErr: ErrNoPort, wantMsg: []string{"Service web has no TCP port"}},
		{name: "several ports need a name", objs: []runtime.Object{web, service("web", "web", http, admin)},
			wantErr: ErrWhichPort, wantMsg: []string{"Service web", "http (80)", "admin (81)"}},
		{name: "port by name", objs: []runtime.Object{web, service("web", "web", http, admin)}, target: Target{Port: "admin"},
			wantService: "web", wantPort: 81, wantApp: 9090, wantContainer: "app"},
		{name: "port by number", objs: []runtime.Object{web, service("web", "web", http, admin)}, target: Target{Port: "80"},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
		{name: "unknown port name", objs: []runtime.Object{web, service("web", "web", http, admin)}, target: Target{Port: "grpc"},
			wantErr: ErrNoPort, wantMsg: []string{`"grpc"`, "Service web", "http (80), admin (81)"}},
		{name: "udp ignored", objs: []runtime.Object{web, service("web", "web", dns, http)},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
		{name: "udp port asked for", objs: []runtime.Object{web, service("web", "web", dns, http)}, target: Target{Port: "dns"},
			wantErr: ErrNoPort, wantMsg: []string{`"dns"`}},
		{name: "only udp", objs: []runtime.Object{web, service("web", "web", dns)},
			wantErr: ErrNoPort, wantMsg: []string{"no TCP port"}},
		{name: "two services need --service", objs: []runtime.Object{web, service("web", "web", http), service("web-admin", "web", admin)},
			wantErr: ErrWhichPort, wantMsg: []string{"Service web, Service web-admin"}},
		{name: "--service picks one", objs: []runtime.Object{web, service("web", "web", http), service("web-admin", "web", admin)},
			target: Target{Service: "web-admin"}, wantService: "web-admin", wantPort: 81, wantApp: 9090, wantContainer: "app"},
		{name: "--service not selecting", objs: []runtime.Object{web, service("web", "web", http), service("api", "api", http)},
			target: Target{Service: "api"}, wantErr: ErrNoService, wantMsg: []string{`"api"`, "web"}},
		// Clients of a headless Service dial the pods: captured in the pod.
		{name: "a headless service is redirected", objs: []runtime.Object{web, headless(service("web", "web", http))},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app", wantRedirect: true},
		{name: "a headless service beside one with an address", objs: []runtime.Object{web, headless(service("web-pods", "web", http)), service("web", "web", http)},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app", wantRedirect: true},
		// Named by the Service with an address, the capture still takes the
		// headless Service's clients, which dial the pods.
		{name: "a headless service beside the one the workload is named by", objs: []runtime.Object{web, headless(service("web-pods", "web", http)), service("web-svc", "web", http)},
			target: Target{Workload: "web-svc"}, wantService: "web-svc", wantPort: 80, wantApp: 8080, wantContainer: "app", wantRedirect: true},
		{name: "a headless service beside the one --service names", objs: []runtime.Object{web, headless(service("web-pods", "web", http)), service("web-svc", "web", http)},
			target: Target{Service: "web-svc"}, wantService: "web-svc", wantPort: 80, wantApp: 8080, wantContainer: "app", wantRedirect: true},
		{name: "a headless service where pod security refuses NET_ADMIN", objs: []runtime.Object{web, headless(service("web", "web", http)), restricted()},
			wantErr: ErrPodSecurity, wantMsg: []string{"Service web is headless", "enforces the restricted Pod Security Standard"}},
		{name: "a headless service beside one with an address where pod security refuses NET_ADMIN",
			objs:        []runtime.Object{web, headless(service("web-pods", "web", http)), service("web", "web", http), restricted()},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app",
			wantWarning: "clients of headless Service web-pods, which dial the pods' own addresses, still reach the app"},
		{name: "a headless service to another port", objs: []runtime.Object{web, headless(service("web-pods", "web", admin)), service("web", "web", http)},
			target: Target{Port: "http"}, wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
		// Another workload's pods behind the Service have no sidecar.
		{name: "a service another workload shares", objs: []runtime.Object{blue, green, service("web", "web", http)},
			wantErr: ErrShared, wantMsg: []string{"Service web also selects the pods of deployment/web-green", "intercept through a Service in front of deployment shop/web alone"}},
		{name: "a shared service named", objs: []runtime.Object{blue, green, service("web", "web", http), blueOnly}, target: Target{Service: "web"},
			wantErr: ErrShared},
		{name: "a shared service beside one of its own", objs: []runtime.Object{blue, green, service("web", "web", http), blueOnly},
			wantService: "web-blue", wantPort: 80, wantApp: 8080, wantContainer: "app",
			wantWarning: "Service web also selects the pods of deployment/web-green, so its clients still reach the app"},
		{name: "host network", objs: []runtime.Object{onHost, service("web", "web", http)},
			wantErr: ErrHostNetwork, wantMsg: []string{"deployment shop/web runs its pods in the node's network"}},
		{name: "already captured resolves to the app port",
			objs: []runtime.Object{web, annotated(service("web", "web", sport("http", 80, intstr.FromInt32(FirstCapture))),
				map[string]string{CapturedAnnot: "80/TCP=http", WorkloadAnnot: "web"})},
			wantService: "web", wantPort: 80, wantApp: 8080, wantContainer: "app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := tt.target
			if target.Namespace == "" {
				target.Namespace = "shop"
			}
			if target.Workload == "" {
				target.Workload = "web"
			}
			p, err := Resolve(t.Context(), workload.Client{CS: fake.NewClientset(tt.objs...)}, target)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%+v) error = %v, want %v", target, err, tt.wantErr)
				}
				for _, s := range tt.wantMsg {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("Resolve(%+v) error %q does not mention %q", target, err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%+v): %v", target, err)
			}
			if !strings.Contains(p.Warning, tt.wantWarning) || (tt.wantWarning == "") != (p.Warning == "") {
				t.Errorf("Resolve(%+v) warning %q, want %q", target, p.Warning, tt.wantWarning)
			}
			if p.Redirect != tt.wantRedirect {
				t.Errorf("Resolve(%+v) redirect %v, want %v", target, p.Redirect, tt.wantRedirect)
			}
			if p.Workload.Name != "web" || p.Service.Name != tt.wantService || p.ServicePort.Port != tt.wantPort {
				t.Errorf("Resolve(%+v) chose deployment %s, service %s port %d; want web, %s port %d",
					target, p.Workload.Name, p.Service.Name, p.ServicePort.Port, tt.wantService, tt.wantPort)
			}
			if p.AppPort != tt.wantApp || p.Container != tt.wantContainer {
				t.Errorf("Resolve(%+v) app port %d in container %q, want %d in %q",
					target, p.AppPort, p.Container, tt.wantApp, tt.wantContainer)
			}
		})
	}
}

// A captured Service keeps its captured targetPort in the plan: retarget
// compares against it and must find the port it already points at.
func TestResolveCapturedKeepsServicePort(t *testing.T) {
	svc := annotated(service("web", "web", sport("http", 80, intstr.FromInt32(FirstCapture))),
		map[string]string{CapturedAnnot: "80/TCP=http"})
	p, err := Resolve(t.Context(), workload.Client{CS: fake.NewClientset(deployment("web", container("app", cport("http", 8080))), svc)},
		Target{Namespace: "shop", Workload: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if p.ServicePort.TargetPort != intstr.FromInt32(FirstCapture) {
		t.Errorf("plan's service port targets %v, want the sidecar's %d", p.ServicePort.TargetPort, FirstCapture)
	}
}

func TestCapturedRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		caps  map[string]intstr.IntOrString
		annot string
	}{
		{name: "none", caps: map[string]intstr.IntOrString{}, annot: ""},
		{name: "named", caps: map[string]intstr.IntOrString{"80/TCP": intstr.FromString("http")}, annot: "80/TCP=http"},
		{name: "sorted by key",
			caps:  map[string]intstr.IntOrString{"80/TCP": intstr.FromString("http"), "443/TCP": intstr.FromInt32(8443), "8080/TCP": intstr.FromInt32(0)},
			annot: "443/TCP=8443,80/TCP=http,8080/TCP=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := formatCaptured(tt.caps)
			if got != tt.annot {
				t.Errorf("formatCaptured(%v) = %q, want %q", tt.caps, got, tt.annot)
			}
			back := captured(map[string]string{CapturedAnnot: got})
			if !maps.Equal(back, tt.caps) {
				t.Errorf("captured(%q) = %v, want %v", got, back, tt.caps)
			}
		})
	}
}

func TestCapturedIgnoresJunk(t *testing.T) {
	tests := []struct {
		name   string
		annots map[string]string
		want   map[string]intstr.IntOrString
	}{
		{name: "nil annotations", annots: nil, want: map[string]intstr.IntOrString{}},
		{name: "no annotation", annots: map[string]string{"team": "a"}, want: map[string]intstr.IntOrString{}},
		{name: "entries without =", annots: map[string]string{CapturedAnnot: "junk,80/TCP=http,"},
			want: map[string]intstr.IntOrString{"80/TCP": intstr.FromString("http")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := captured(tt.annots); !maps.Equal(got, tt.want) {
				t.Errorf("captured(%v) = %v, want %v", tt.annots, got, tt.want)
			}
		})
	}
}

func TestPortKey(t *testing.T) {
	tests := []struct {
		sp   corev1.ServicePort
		want string
	}{
		{corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}, "80/TCP"},
		{corev1.ServicePort{Port: 80}, "80/TCP"}, // unset protocol is TCP, as the API server defaults it
		{corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}, "53/UDP"},
	}
	for _, tt := range tests {
		if got := portKey(tt.sp); got != tt.want {
			t.Errorf("portKey(%d/%q) = %q, want %q", tt.sp.Port, tt.sp.Protocol, got, tt.want)
		}
	}
}

// A workload no Service selects (a queue worker) is replaced by a port of
// its containers: nothing sends it traffic, the port only holds the
// intercept.
func TestResolveAWorkerToReplace(t *testing.T) {
	web := deployment("web", container("app", corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, cport("http", 8080), cport("admin", 9090)))
	bare := deployment("web", container("app"))
	for _, tc := range []struct {
		name      string
		d         *appsv1.Deployment
		port      string
		app       int32
		container string
		err       string
	}{
		{name: "the first TCP port declared", d: web, app: 8080, container: "app"},
		{name: "a declared port by name", d: web, port: "admin", app: 9090, container: "app"},
		{name: "a declared port by number", d: web, port: "9090", app: 9090, container: "app"},
		{name: "an undeclared number", d: bare, port: "5000", app: 5000},
		{name: "an unknown name", d: web, port: "grpc", err: `declare no TCP port "grpc"`},
		{name: "no port at all", d: bare, err: "declare no TCP port; give one its app listens on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Resolve(t.Context(), workload.Client{CS: fake.NewClientset(tc.d)}, Target{Namespace: "shop", Workload: "web", Port: tc.port, Replace: true})
			if tc.err != "" {
				if !errors.Is(err, ErrNoPort) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("Resolve = %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil || p.Service != nil || p.AppPort != tc.app || p.Container != tc.container {
				t.Errorf("Resolve = %+v, %v; want no Service, app port %d in %q", p, err, tc.app, tc.container)
			}
		})
	}
	// Without --replace, a workload no Service selects has nothing to take.
	if _, err := Resolve(t.Context(), workload.Client{CS: fake.NewClientset(web)}, Target{Namespace: "shop", Workload: "web"}); !errors.Is(err, ErrNoService) || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("without --replace: %v", err)
	}
}

// A CronJob (or Job) is only replaced: without --replace the sentence
// says so; with it the plan holds no Service and no port, even when a
// Service selects its pods.
func TestResolveACronJob(t *testing.T) {
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: "shop"},
		Spec: batchv1.CronJobSpec{Schedule: "@daily", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "nightly"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{container("report", cport("http", 8080))}}}}}}}
	wc := workload.Client{CS: fake.NewClientset(cj, service("nightly-svc", "nightly", sport("http", 80, intstr.FromInt32(8080))))}
	_, err := Resolve(t.Context(), wc, Target{Namespace: "shop", Workload: "cronjob/nightly"})
	if !errors.Is(err, ErrBatch) || !strings.Contains(err.Error(), "`tunnel intercept cronjob/nightly --replace` suspends it") {
		t.Errorf("without --replace: %v", err)
	}
	for _, name := range []string{"cronjob/nightly", "nightly"} {
		p, err := Resolve(t.Context(), wc, Target{Namespace: "shop", Workload: name, Replace: true})
		if err != nil || p.Workload.Kind != workload.CronJob || p.Service != nil || p.AppPort != 0 {
			t.Errorf("Resolve(%q, replace) = %+v, %v; want the CronJob, no Service, no port", name, p, err)
		}
	}
}
