//go:build e2e

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"tunnel.dev/tunnel/integration/lab"
)

// localServer is the process on a laptop an intercept sends traffic to:
// the test app's own HTTP server, named so answers say where they came
// from, logging each request it gets.
type localServer struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	log bytes.Buffer
}

func (s *localServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(p)
}

func (s *localServer) requests() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

func (s *localServer) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

func startLocalServer(t *testing.T, l *laptop, name string, port int, env ...string) *localServer {
	t.Helper()
	args := append([]string{"env", "POD_NAME=" + name, "LOG_REQUESTS=1"}, env...)
	cmd, err := lab.Command(context.Background(), h.Lab.Paths, l.opt, append(args,
		h.EchoClient(), "--http", fmt.Sprintf("127.0.0.1:%d", port),
		"--http2", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0")...)
	if err != nil {
		t.Fatal(err)
	}
	s := &localServer{cmd: cmd}
	cmd.Stdout, cmd.Stderr = s, s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	eventually(t, 10*time.Second, "local server "+name+" listens", func() (bool, string) {
		out, err := l.sh(fmt.Sprintf("curl -sf --max-time 1 http://127.0.0.1:%d/healthz", port))
		return err == nil, out
	})
	return s
}

// waitServes waits until kube-proxy serves a new Service's ports.
func waitServes(t *testing.T, ns, name string, ports ...int) {
	t.Helper()
	ip := serviceIP(t, ns, name)
	for _, p := range ports {
		eventually(t, 30*time.Second, fmt.Sprintf("service %s answers on port %d", name, p), func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			out, err := h.Run(ctx, node, "curl", "-sf", "--max-time", "1", fmt.Sprintf("http://%s:%d/healthz", ip, p))
			return err == nil, out
		})
	}
}

// eventually polls f until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fromNode sends an HTTP request from the node (a client in the cluster)
// and returns the body.
func fromNode(t *testing.T, url string, headers ...string) string {
	t.Helper()
	args := []string{"curl", "-sS", "--max-time", "10"}
	for _, hd := range headers {
		args = append(args, "-H", hd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := h.Run(ctx, node, append(args, url)...)
	if err != nil {
		t.Fatalf("curl %s from the node: %v\n%s", url, err, out)
	}
	return out
}

func serviceIP(t *testing.T, ns, name string) string {
	t.Helper()
	svc, err := h.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// workloadState is what uninstall must give back exactly: the Deployment's
// spec and annotations (but the controller's revision) and its Services'.
func workloadState(t *testing.T, ns, name string, services ...string) string {
	t.Helper()
	ctx := context.Background()
	d, err := h.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	annots := map[string]string{}
	for k, v := range d.Annotations {
		if k != "deployment.kubernetes.io/revision" {
			annots[k] = v
		}
	}
	state := map[string]any{"deployment": map[string]any{"spec": d.Spec, "annotations": annots, "labels": d.Labels}}
	for _, s := range services {
		svc, err := h.Client.CoreV1().Services(ns).Get(ctx, s, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		state["service/"+s] = map[string]any{"spec": svc.Spec, "annotations": svc.Annotations, "labels": svc.Labels}
	}
	b, err := json.MarshalIndent(state, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type listedWorkload struct {
	Name          string  `json:"name"`
	Sidecar       bool    `json:"sidecar"`
	CapturedPorts []int32 `json:"captured_ports"`
	ReplacedFor   string  `json:"replaced_for"`
	Intercepts    []struct {
		Name        string `json:"name"`
		Mode        string `json:"mode"`
		User        string `json:"user"`
		HeaderValue string `json:"header_value"`
		PreviewURL  string `json:"preview_url"`
	} `json:"intercepts"`
}

func list(t *testing.T, l *laptop, ns string) map[string]listedWorkload {
	t.Helper()
	raw := l.must("list", "-n", ns, "-o", "json")
	var out struct {
		Workloads []listedWorkload `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		t.Fatalf("list -o json: %v\n%s", err, raw)
	}
	m := map[string]listedWorkload{}
	for _, w := range out.Workloads {
		m[w.Name] = w
	}
	return m
}

// connectedToEcho installs the manager, deploys the test app as "echo"
// (replicas pods) in a namespace of its own, and connects laptop name
// there as admin. It returns the namespace and the Service's address.
func connectedToEcho(t *testing.T, name string, replicas int32) (ns, ip string, l *laptop) {
	t.Helper()
	installManager(t)
	ns = h.Namespace(t)
	h.DeployEcho(t, ns, "echo", replicas)
	ip = serviceIP(t, ns, "echo")
	l = newLaptop(t, name, "admin")
	l.must("connect", "-n", ns)
	return ns, ip, l
}

func TestGlobalInterceptLeaveAndUninstall(t *testing.T) {
	ns, ip, l := connectedToEcho(t, "frank", 2)
	before := workloadState(t, ns, "echo", "echo")
	startLocalServer(t, l, "laptop-frank", 7070)
	out := l.must("intercept", "echo", "--port", "7070:http")
	if !strings.Contains(out, "echo-http") {
		t.Errorf("intercept says:\n%s", out)
	}
	// Every request to the Service reaches the laptop: from the node, and
	// from a pod of the cluster by the Service's name.
	for i := range 5 {
		if got := fromNode(t, fmt.Sprintf("http://%s/global-%d", ip, i)); !strings.Contains(got, "pod=laptop-frank") {
			t.Fatalf("request %d to the intercepted Service: %s", i, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := kubectl(ctx, node, "exec", "-n", ns, "deploy/echo", "-c", "echo", "--", "/echo", "get", "http://echo/from-a-pod")
	if err != nil || !strings.Contains(got, "pod=laptop-frank") {
		t.Errorf("a pod's request by name: %v\n%s", err, got)
	}
	// Both pods' sidecars come to reach the laptop over the spares it
	// port-forwards to them, not through the manager.
	eventually(t, 20*time.Second, "every sidecar uses the direct path", func() (bool, string) {
		for i := range 10 {
			fromNode(t, fmt.Sprintf("http://%s/direct-%d", ip, i))
		}
		all, direct := sidecarMetrics(t, ns, "app=echo")
		return direct == 2, all
	})
	w := list(t, l, ns)["echo"]
	if !w.Sidecar || len(w.Intercepts) != 1 || w.Intercepts[0].Mode != "global" || w.Intercepts[0].User != "admin" {
		t.Errorf("list: %+v", w)
	}

	l.must("leave", "echo-http")
	eventually(t, 5*time.Second, "the app answers after leave", func() (bool, string) {
		got := fromNode(t, "http://"+ip+"/after-leave")
		return strings.Contains(got, "pod=echo-"), got
	})

	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := h.Run(ctx, node, h.Tunnel(t), "uninstall", "--agent", "echo", "-n", ns); err != nil {
		t.Fatalf("uninstall --agent: %v\n%s", err, out)
	}
	if after := workloadState(t, ns, "echo", "echo"); after != before {
		t.Errorf("uninstall did not restore the workload exactly:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && len(p.Spec.Containers) != 1 {
			t.Errorf("pod %s still has %d containers after uninstall", p.Name, len(p.Spec.Containers))
		}
	}
	for i := range 10 {
		if got := fromNode(t, fmt.Sprintf("http://%s/after-uninstall-%d", ip, i)); !strings.Contains(got, "pod=echo-") {
			t.Errorf("after uninstall: %s", got)
		}
	}
}

func TestInterceptNumericUndeclaredPortOfMultiPortService(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	// A second Service: port a leads to 8081 by number (the container does
	// not declare it), port b to the named port http.
	ctx := context.Background()
	_, err := h.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "multi", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{
				{Name: "a", Port: 80, TargetPort: intstr.FromInt32(lab.EchoHTTP2Port)},
				{Name: "b", Port: 81, TargetPort: intstr.FromString("http")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitServes(t, ns, "multi", 80, 81)
	before := workloadState(t, ns, "echo", "echo", "multi")
	multi, echo := serviceIP(t, ns, "multi"), serviceIP(t, ns, "echo")

	l := newLaptop(t, "gina", "admin")
	l.must("connect", "-n", ns)
	startLocalServer(t, l, "laptop-gina", 7071)
	// Two Services select the workload: naming neither is a mistake.
	if out, err := l.run("intercept", "echo", "--port", "7071"); err == nil || !strings.Contains(out, "--port") {
		t.Errorf("intercept without saying which port: %v\n%s", err, out)
	}
	if out, err := l.run("intercept", "echo", "--port", "7071:nosuch", "--service", "multi"); err == nil || !strings.Contains(out, `no TCP port "nosuch"`) {
		t.Errorf("intercept of an unknown port: %v\n%s", err, out)
	}
	if out, err := l.run("intercept", "nosuch", "--port", "7071"); err == nil || !strings.Contains(out, `no workload or Service named "nosuch"`) {
		t.Errorf("intercept of an unknown workload: %v\n%s", err, out)
	}
	l.must("intercept", "echo", "--service", "multi", "--port", "7071:a")
	if got := fromNode(t, "http://"+multi+":80/a"); !strings.Contains(got, "pod=laptop-gina") {
		t.Errorf("the captured numeric port: %s", got)
	}
	// Only the chosen port is captured.
	if got := fromNode(t, "http://"+multi+":81/b"); !strings.Contains(got, "pod=echo-") {
		t.Errorf("the other port of the Service: %s", got)
	}
	if got := fromNode(t, "http://"+echo+"/other-service"); !strings.Contains(got, "pod=echo-") {
		t.Errorf("another Service of the workload: %s", got)
	}
	l.must("quit")
	ctx2, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if out, err := h.Run(ctx2, node, h.Tunnel(t), "uninstall", "--all-agents"); err != nil {
		t.Fatalf("uninstall --all-agents: %v\n%s", err, out)
	}
	if after := workloadState(t, ns, "echo", "echo", "multi"); after != before {
		t.Errorf("uninstall did not restore the workload exactly:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// A laptop server that closes idle connections (as gunicorn does after 2 s
// and Node after 5 s) loses no request: kubelet's port-forward passes its
// close on up to a second late, so the sidecar lets connections over
// spares idle for less than that.
func TestPOSTAfterTheLaptopsServerClosedAnIdleConnection(t *testing.T) {
	ns, ip, l := connectedToEcho(t, "gina", 1)
	startLocalServer(t, l, "laptop-gina", 7074, "IDLE_TIMEOUT=1500ms")
	l.must("intercept", "echo", "--port", "7074:http")
	eventually(t, 20*time.Second, "the sidecar uses the direct path", func() (bool, string) {
		fromNode(t, "http://"+ip+"/warm-up")
		all, direct := sidecarMetrics(t, ns, "app=echo")
		return direct == 1, all
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 4 {
		out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "10", "-w", " code=%{http_code}", "-X", "POST", "-d", "order", fmt.Sprintf("http://%s/post-%d", ip, i))
		if err != nil || !strings.Contains(out, "pod=laptop-gina") || !strings.Contains(out, "code=200") {
			t.Errorf("POST %d, 1.7 s after the last: %v\n%s", i, err, out)
		}
		time.Sleep(1700 * time.Millisecond) // past the server's idle close
	}
}

func TestFallbackNoFallbackAndMirror(t *testing.T) {
	ns, ip, l := connectedToEcho(t, "liam", 1)

	srv := startLocalServer(t, l, "laptop-liam", 7072)
	l.must("intercept", "echo", "--port", "7072:http")
	if got := fromNode(t, "http://"+ip+"/up"); !strings.Contains(got, "pod=laptop-liam") {
		t.Fatalf("with the local server up: %s", got)
	}
	srv.stop()
	if got := fromNode(t, "http://"+ip+"/down"); !strings.Contains(got, "pod=echo-") {
		t.Errorf("with the local server stopped, the app should answer: %s", got)
	}
	// The sidecar counts what it did, per intercept.
	metrics, _ := sidecarMetrics(t, ns, "app=echo")
	for _, want := range []string{
		`tunnel_sidecar_intercepted_requests_total{intercept="echo-http",result="laptop"} 1`,
		`tunnel_sidecar_fallbacks_total{intercept="echo-http"} 1`,
		`tunnel_sidecar_intercepted_bytes_total{direction="from_laptop",intercept="echo-http"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("sidecar metrics lack %s:\n%s", want, metrics)
		}
	}
	l.must("leave", "echo-http")

	out := l.must("intercept", "echo", "--port", "7072:http", "--no-fallback")
	if !strings.Contains(out, "nothing listens on localhost:7072") {
		t.Errorf("intercept with nothing listening locally gives no warning:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, _ = h.Run(ctx, node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://"+ip+"/no-fallback")
	if strings.TrimSpace(out) != "502" {
		t.Errorf("--no-fallback with nothing listening: HTTP %s, want 502", out)
	}
	l.must("leave", "echo-http")

	srv = startLocalServer(t, l, "laptop-liam", 7072)
	l.must("intercept", "echo", "--port", "7072:http", "--mirror")
	if got := fromNode(t, "http://"+ip+"/mirrored"); !strings.Contains(got, "pod=echo-") {
		t.Errorf("a mirrored request is answered by the app: %s", got)
	}
	eventually(t, 10*time.Second, "the laptop gets a copy", func() (bool, string) {
		return strings.Contains(srv.requests(), "path=/mirrored"), srv.requests()
	})
	// leave --all ends every intercept of ours, each said in a line.
	l.must("intercept", "echo", "--port", "7072:http", "--http-header", "x-tunnel-who=liam")
	out = l.must("leave", "--all")
	// Default names: the laptop's user and host, "-mirror" for the mirror.
	if strings.Count(out, "Intercept echo-http-root-") != 2 || !strings.Contains(out, "-mirror in namespace "+ns+" ended.") {
		t.Errorf("leave --all says:\n%s", out)
	}
	if got := list(t, l, ns); len(got["echo"].Intercepts) != 0 {
		t.Errorf("after leave --all: %+v", got)
	}
	if out := l.must("leave", "--all"); !strings.Contains(out, "You hold no intercepts.") {
		t.Errorf("leave --all with none: %s", out)
	}
}

func TestInterceptEndsWhenItsDaemonDies(t *testing.T) {
	ns, ip, l := connectedToEcho(t, "mona", 1)
	startLocalServer(t, l, "laptop-mona", 7073)

	// quit ends the laptop's intercepts at once.
	l.must("intercept", "echo", "--port", "7073:http", "--no-fallback")
	if got := fromNode(t, "http://"+ip+"/"); !strings.Contains(got, "pod=laptop-mona") {
		t.Fatalf("intercepted: %s", got)
	}
	l.must("quit")
	if got := fromNode(t, "http://"+ip+"/after-quit"); !strings.Contains(got, "pod=echo-") {
		t.Errorf("after quit: %s", got)
	}

	l.must("connect", "-n", ns)
	l.must("intercept", "echo", "--port", "7073:http", "--no-fallback")
	if got := fromNode(t, "http://"+ip+"/"); !strings.Contains(got, "pod=laptop-mona") {
		t.Fatalf("intercepted: %s", got)
	}
	if out, err := l.sh(`kill -9 $(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock)`); err != nil {
		t.Fatalf("kill -9 the daemon: %v\n%s", err, out)
	}
	start := time.Now()
	eventually(t, 30*time.Second, "the app answers once the session is gone", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "2", "http://"+ip+"/after-kill")
		return err == nil && strings.Contains(out, "pod=echo-"), out
	})
	t.Logf("the app answered again %s after kill -9", time.Since(start).Round(100*time.Millisecond))
}

// A workload whose new pods cannot start: intercept says why, and takes
// the sidecar out again.
func TestInterceptOfAWorkloadThatCannotStart(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx := context.Background()
	// The next rollout's app container names an image that is not there.
	d, err := h.Client.AppsV1().Deployments(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers[0].Image = lab.RegistryHost() + "/lab/nosuch:v1"
	if _, err := h.Client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := workloadState(t, ns, "echo", "echo")

	l := newLaptop(t, "olga", "admin")
	l.must("connect", "-n", ns)
	out, err := l.run("intercept", "echo", "--port", "7075:http", "--timeout", "60s")
	if err == nil || !pullFailed(out) {
		t.Fatalf("intercept of a workload whose pods cannot start: %v\n%s", err, out)
	}
	if after := workloadState(t, ns, "echo", "echo"); after != before {
		t.Errorf("a failed intercept left the workload changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// deployEnvApp deploys the test app with an environment drawn from a
// ConfigMap, a Secret, the downward API and $(VAR) references.
func deployEnvApp(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "envapp"}
	if _, err := h.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "settings"},
		Data:       map[string]string{"GREETING": "hello from a ConfigMap", "MODE": "test"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds"},
		StringData: map[string]string{"password": "s3cret 'quoted'"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "envapp"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(lab.EchoHTTPPort)}}},
	}
	if _, err := h.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "envapp"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"team": "tunnel"}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{
						Name: "app", Image: lab.EchoImage, Command: []string{"/echo"},
						EnvFrom: []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
							{Name: "TEAM", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['team']"}}},
							{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
								LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
							{Name: "SALUTE", Value: "$(CFG_GREETING), $(POD_NAME)! $$(not expanded) $(UNDEFINED)"},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/healthz", Port: intstr.FromInt32(lab.EchoHTTPPort)}}, PeriodSeconds: 1},
					}},
				},
			},
		},
	}
	if _, err := h.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitDeployment(ctx, h.Client, ns, "envapp", 90*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestInterceptEnvironmentAndCommand(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	deployEnvApp(t, ns)
	l := newLaptop(t, "nick", "admin")

	dir := t.TempDir()
	envJSON, envSh := dir+"/env.json", dir+"/env.sh"
	// Not connected yet: intercept connects first. The command sees the
	// pod's environment; its exit code is tunnel's, and the intercept ends
	// with it.
	out, err := l.run("intercept", "envapp", "-n", ns, "--port", "7074", "--env-json", envJSON, "--env-file", envSh, "--env-syntax", "sh",
		"--", "sh", "-c", `test "$CFG_GREETING" = "hello from a ConfigMap" && test -n "$ENVAPP_SERVICE_HOST" && exit 7`)
	if code := exitStatus(err); code != 7 {
		t.Fatalf("intercept -- COMMAND: exit code %d (%v), want the command's 7\n%s", code, err, out)
	}
	if w := list(t, l, ns)["envapp"]; len(w.Intercepts) != 0 {
		t.Errorf("the intercept outlived its command: %+v", w)
	}

	raw, err := os.ReadFile(envJSON)
	if err != nil {
		t.Fatal(err)
	}
	var file map[string]string
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatalf("--env-json: %v\n%s", err, raw)
	}
	// What the app's process really has, asked of the pod itself.
	pods, err := h.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=envapp"})
	if err != nil {
		t.Fatal(err)
	}
	var pod map[string]string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && p.Status.Phase == corev1.PodRunning {
			body := fromNode(t, fmt.Sprintf("http://%s:%d/env", p.Status.PodIP, lab.EchoHTTPPort))
			if err := json.Unmarshal([]byte(body), &pod); err != nil {
				t.Fatalf("/env: %v\n%s", err, body)
			}
			break
		}
	}
	delete(pod, "PATH") // the runtime's, not the workload's: a laptop keeps its own
	delete(pod, "HOME")
	if !reflect.DeepEqual(file, pod) {
		for k, v := range pod {
			if file[k] != v {
				t.Errorf("%s: pod has %q, env file %q", k, v, file[k])
			}
		}
		for k, v := range file {
			if _, ok := pod[k]; !ok {
				t.Errorf("%s=%q in the env file, not in the pod", k, v)
			}
		}
	}
	sh, err := l.sh(fmt.Sprintf(`. %s && printf '%%s|%%s' "$PASSWORD" "$SALUTE"`, envSh))
	if want := pod["PASSWORD"] + "|" + pod["SALUTE"]; err != nil || sh != want {
		t.Errorf("sourcing --env-syntax sh: %v: got %q, want %q", err, sh, want)
	}
}

func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// sidecarMetrics scrapes the sidecars of the pods selector picks, and
// counts those that have reached a laptop over its direct spares.
func sidecarMetrics(t *testing.T, ns, selector string) (all string, direct int) {
	t.Helper()
	pods, err := h.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			m := fromNode(t, fmt.Sprintf("http://%s:18099/metrics", p.Status.PodIP))
			if strings.Contains(m, `tunnel_sidecar_laptop_connections_total{intercept="echo-http",path="direct"}`) {
				direct++
			}
			all += m
		}
	}
	return all, direct
}

// TestInterceptRefusesAHeadlessService: behind a headless Service the
// sidecar would take nothing (clients dial the pods' own addresses), so
// intercept says so in one sentence and changes nothing.
