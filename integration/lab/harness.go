//go:build linux

package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"k8s.io/client-go/dynamic"
	"tunnel.dev/tunnel/agent/manifest"
)

// Harness is what an end-to-end test gets: the running lab and an admin
// client for it.
type Harness struct {
	*Lab
	Config Config
	Client *kubernetes.Clientset
	// Dynamic reads and writes custom resources (Gateway API, Argo's).
	Dynamic dynamic.Interface
	// Agent is this tree's agent image, pushed to the lab's registry; the
	// tunnel CLI installs it by default.
	Agent Agent

	buildOnce sync.Once
	tunnel    string
	buildErr  error
}

// Tunnel returns the path of the tunnel binary built from this tree, built
// once per test process.
func (h *Harness) Tunnel(t testing.TB) string {
	t.Helper()
	h.buildOnce.Do(func() {
		h.tunnel = h.Paths.state("bin", "tunnel")
		h.buildErr = BuildTunnel(context.Background(), h.Agent.Stamp, h.tunnel)
	})
	if h.buildErr != nil {
		t.Fatal(h.buildErr)
	}
	return h.tunnel
}

// EchoClient is the test app's binary, whose tcp, udp, get and lookup verbs
// are clients for laptops.
func (h *Harness) EchoClient() string { return h.Paths.state("images", "echo") }

// Main is the body of an end-to-end package's TestMain: it brings the lab
// up with cfg (or reuses the one that runs), runs the tests and returns the
// exit code. The lab stays up for the next package and the next run.
func Main(m *testing.M, cfg Config, h **Harness) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the end-to-end tests need root (they run a cluster and network namespaces): run them with sudo")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	l := New(DefaultPaths(), os.Stderr)
	if err := l.Up(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "lab up:", err)
		return 1
	}
	hn, err := Attach(ctx, l, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*h = hn
	return m.Run()
}

// Attach returns the harness of a lab that is up with cfg: an admin
// client, and this tree's agent image pushed to the lab's registry, as the
// tunnel CLI the harness builds installs it. A manager of other code goes.
func Attach(ctx context.Context, l *Lab, cfg Config) (*Harness, error) {
	cs, err := Client(l.Paths)
	if err != nil {
		return nil, err
	}
	dyn, err := DynamicClient(l.Paths)
	if err != nil {
		return nil, err
	}
	agent, err := PushAgent(ctx, l.Paths)
	if err != nil {
		return nil, fmt.Errorf("push the agent image: %w", err)
	}
	if err := removeOtherManager(ctx, cs, agent.Ref); err != nil {
		return nil, err
	}
	return &Harness{Lab: l, Config: cfg.Defaults(), Client: cs, Dynamic: dyn, Agent: agent}, nil
}

// removeOtherManager uninstalls a manager that runs another image than ref.
func removeOtherManager(ctx context.Context, cs kubernetes.Interface, ref string) error {
	d, err := cs.AppsV1().Deployments(manifest.Namespace).Get(ctx, manifest.Manager, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the tunnel manager: %w", err)
	}
	if len(d.Spec.Template.Spec.Containers) == 1 && d.Spec.Template.Spec.Containers[0].Image == ref {
		return nil
	}
	if err := manifest.Uninstall(ctx, cs); err != nil {
		return fmt.Errorf("remove an earlier run's tunnel manager: %w", err)
	}
	return nil
}

// Namespace creates a namespace for one test and deletes it afterwards; if
// the test failed it first prints the namespace's pods, events and logs and
// the end of the node components' logs.
func (h *Harness) Namespace(t testing.TB) string {
	t.Helper()
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := strings.ToLower(t.Name())
	name = strings.NewReplacer("/", "-", "_", "-").Replace(name)
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(name, "-") + "-" + hex.EncodeToString(suffix)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"tunnel.dev/e2e": "true"}}}
	if _, err := h.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			h.dump(t, name)
		}
		_ = h.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// dump prints what a person needs to see why a test failed.
func (h *Harness) dump(t testing.TB, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b bytes.Buffer
	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "pod %s: %s ip=%s\n", p.Name, p.Status.Phase, p.Status.PodIP)
			for _, c := range p.Spec.Containers {
				logs, _ := h.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: ptr.To(int64(30))}).DoRaw(ctx)
				fmt.Fprintf(&b, "--- logs of %s/%s:\n%s\n", p.Name, c.Name, logs)
			}
		}
	}
	if events, err := h.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, e := range events.Items {
			fmt.Fprintf(&b, "event %s %s: %s %s\n", e.InvolvedObject.Name, e.Type, e.Reason, e.Message)
		}
	}
	for _, c := range []string{"kubelet", "kube-apiserver", "containerd", "kube-proxy"} {
		log, _ := os.ReadFile(h.Paths.LogFile(c))
		fmt.Fprintf(&b, "--- last lines of %s:\n%s\n", c, tail(string(log), 15))
	}
	t.Logf("state of namespace %s:\n%s", ns, b.String())
}

// DeployEcho creates a Deployment of the test app and a Service in front of
// it, and waits until the Service answers; the test fails if it cannot.
func (h *Harness) DeployEcho(t testing.TB, ns, name string, replicas int32) {
	t.Helper()
	if err := DeployEcho(context.Background(), h.Lab, h.Client, ns, name, replicas); err != nil {
		t.Fatal(err)
	}
}

// DeployEcho creates a Deployment of the test app and a Service named name
// in front of it (port 80 to the app's 8080, plus its TCP and UDP echo), and
// waits until it is available and kube-proxy serves its address.
func DeployEcho(ctx context.Context, l *Lab, cs kubernetes.Interface, ns, name string, replicas int32) error {
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: EchoTemplate(labels),
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment %s/%s: %w", ns, name, err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, EchoService(ns, name, labels), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s/%s: %w", ns, name, err)
	}
	if err := WaitDeployment(ctx, cs, ns, name, 90*time.Second); err != nil {
		return err
	}
	return awaitService(ctx, l, cs, ns, name)
}

// EchoTemplate is the test app's pod template, with labels.
func EchoTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		// The lab's Prometheus scrapes the app's own metrics (podtargets).
		ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
			"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(EchoMetricsPort)}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers: []corev1.Container{{
				Name: "echo", Image: EchoImage,
				Command: []string{"/echo"},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: EchoHTTPPort},
					{Name: "tcp-echo", ContainerPort: EchoTCPPort},
					{Name: "udp-echo", ContainerPort: EchoUDPPort, Protocol: corev1.ProtocolUDP},
				},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// EchoService is the Service in front of the test app: port 80 to the
// app's 8080, plus its TCP and UDP echo.
func EchoService(ns, name string, selector map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "tcp-echo", Port: EchoTCPPort, TargetPort: intstr.FromInt32(EchoTCPPort)},
				{Name: "udp-echo", Port: EchoUDPPort, TargetPort: intstr.FromInt32(EchoUDPPort), Protocol: corev1.ProtocolUDP},
			},
		},
	}
}

// awaitService waits until a fresh connection to the Service's address is
// answered: until kube-proxy has written the Service's rules, packets to
// its ClusterIP follow the node's default route into the sink, and the
// conntrack entry the first SYN leaves keeps that connection's retries
// there too.
func awaitService(ctx context.Context, l *Lab, cs kubernetes.Interface, ns, name string) error {
	svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s/healthz", svc.Spec.ClusterIP)
	return poll(ctx, 30*time.Second, "service "+ns+"/"+name+" answers on "+url, func(ctx context.Context) (bool, error) {
		out, err := l.Run(ctx, ExecOptions{}, "curl", "-sf", "--max-time", "1", url)
		return err == nil, fmt.Errorf("%v: %s", err, out)
	})
}

// Run runs a command in a laptop (or, with Laptop "", the node) and returns
// its combined output.
func (l *Lab) Run(ctx context.Context, opt ExecOptions, argv ...string) (string, error) {
	cmd, err := Command(ctx, l.Paths, opt, argv...)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = io.NopCloser(strings.NewReader(""))
	err = cmd.Run()
	return out.String(), err
}
