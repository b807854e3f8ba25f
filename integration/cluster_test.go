//go:build e2e

// Package integration holds the end-to-end tests: real binaries against the
// lab's real cluster, from laptop network namespaces, with real clients.
package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

var h *lab.Harness

func TestMain(m *testing.M) { os.Exit(lab.Main(m, lab.Config{}, &h)) }

func kubectl(ctx context.Context, opt lab.ExecOptions, args ...string) (string, error) {
	return h.Run(ctx, opt, append([]string{"kubectl"}, args...)...)
}

var (
	node  = lab.ExecOptions{}
	alice = lab.ExecOptions{Laptop: "alice"}
)

func TestEchoAnswersThroughClusterIPFromNodeOnly(t *testing.T) {
	t.Parallel()
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx := context.Background()
	svc, err := h.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/hello", svc.Spec.ClusterIP)
	out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "5", url)
	if err != nil || !strings.Contains(out, "pod=echo-") || !strings.Contains(out, "path=/hello") {
		t.Fatalf("curl %s from the node: %v\n%s", url, err, out)
	}

	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("list echo pods: %v (%d pods)", err, len(pods.Items))
	}
	podURL := fmt.Sprintf("http://%s:%d/", pods.Items[0].Status.PodIP, lab.EchoHTTPPort)
	for _, u := range []string{url, podURL} {
		out, err := h.Run(ctx, alice, "curl", "-sS", "--max-time", "3", u)
		if err == nil {
			t.Errorf("curl %s from a laptop answered; the laptop must not reach the cluster without a tunnel:\n%s", u, out)
		}
	}
	// The node's own address is reachable from a laptop, as a real API server is.
	if out, err := h.Run(ctx, alice, "curl", "-sk", "--max-time", "5", "https://10.209.0.1:6443/livez"); err != nil {
		t.Errorf("API server from a laptop: %v\n%s", err, out)
	}
}

func TestPodResolvesKubernetesThroughCoreDNS(t *testing.T) {
	t.Parallel()
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx := context.Background()
	name := "kubernetes.default.svc." + h.Config.ClusterDomain
	out, err := kubectl(ctx, node, "exec", "-n", ns, "deploy/echo", "--", "/echo", "lookup", name)
	if err != nil {
		t.Fatalf("lookup %s in a pod: %v\n%s", name, err, out)
	}
	svc, err := h.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != svc.Spec.ClusterIP {
		t.Fatalf("%s resolved to %q, want the kubernetes Service's %s", name, out, svc.Spec.ClusterIP)
	}
	// And a Service by its short name through the pod's search path.
	out, err = kubectl(ctx, node, "exec", "-n", ns, "deploy/echo", "--", "/echo", "get", "http://echo/short")
	if err != nil || !strings.Contains(out, "path=/short") {
		t.Fatalf("get http://echo/ from a pod: %v\n%s", err, out)
	}
}

func TestPortForwardFromLaptop(t *testing.T) {
	t.Parallel()
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Both ends in the laptop: kubectl forwards through the API server and
	// the kubelet; curl asks the forwarded port.
	script := fmt.Sprintf(`kubectl port-forward -n %s svc/echo 18080:80 >/tmp/pf-%s.log 2>&1 &
pf=$!
trap 'kill $pf' EXIT
for i in $(seq 1 100); do
  if curl -sS --max-time 2 http://127.0.0.1:18080/forwarded 2>/dev/null; then exit 0; fi
  sleep 0.1
done
cat /tmp/pf-%s.log; exit 1`, ns, ns, ns)
	out, err := h.Run(ctx, alice, "sh", "-c", script)
	if err != nil || !strings.Contains(out, "path=/forwarded") {
		t.Fatalf("port-forward from a laptop: %v\n%s", err, out)
	}
}

func TestDevUserIsNotClusterAdmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dev := lab.ExecOptions{Laptop: "alice", User: "dev"}
	out, err := kubectl(ctx, dev, "get", "pods", "-n", "kube-system")
	if err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("dev listed pods in kube-system: err=%v\n%s", err, out)
	}
	if out, err := kubectl(ctx, dev, "get", "pods", "-n", "dev"); err != nil {
		t.Fatalf("dev may not list pods in its own namespace: %v\n%s", err, out)
	}
	if out, err := kubectl(ctx, dev, "auth", "can-i", "create", "pods/portforward", "-n", "dev"); err != nil || lastLine(out) != "yes" {
		t.Fatalf("dev may not port-forward in namespace dev: %v\n%s", err, out)
	}
	if out, err := kubectl(ctx, dev, "get", "nodes"); err != nil {
		t.Fatalf("dev may not read nodes: %v\n%s", err, out)
	}
	// can-i prints a warning about cluster-scoped resources before its answer.
	if out, _ := kubectl(ctx, dev, "auth", "can-i", "create", "clusterrolebindings"); lastLine(out) != "no" {
		t.Fatalf("dev may create clusterrolebindings: %s", out)
	}
}

func TestLaptopUsesLabUpstreamResolver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	out, err := h.Run(ctx, alice, "dig", "+short", "+time=2", "upstream.lab.test")
	if err != nil || strings.TrimSpace(out) != "10.209.0.1" {
		t.Fatalf("dig upstream.lab.test in a laptop: %v\n%s", err, out)
	}
	// Two laptops at once, each with its own link.
	bob := lab.ExecOptions{Laptop: "bob"}
	a, err1 := h.Run(ctx, alice, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	b, err2 := h.Run(ctx, bob, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err1 != nil || err2 != nil || a == b {
		t.Fatalf("laptops alice and bob share or lack an address: %q / %q (%v %v)", a, b, err1, err2)
	}
	if out, err := h.Run(ctx, bob, "ip", "route", "show", "default"); err != nil || !strings.Contains(out, "default via") {
		t.Fatalf("laptop bob has no default route: %v\n%s", err, out)
	}
}

func TestUpAgainChangesNothing(t *testing.T) {
	// Not parallel: it restarts nothing, and shows so by the pids.
	before := h.Status()
	if !before.Up {
		t.Fatalf("lab not fully up: %+v", before.Components)
	}
	if err := h.Up(context.Background(), h.Config); err != nil {
		t.Fatal(err)
	}
	after := h.Status()
	for name, s := range before.Components {
		if after.Components[name] != s {
			t.Errorf("%s: %s before a second up, %s after", name, s, after.Components[name])
		}
	}
	err := h.Up(context.Background(), lab.Config{ClusterDomain: "other.example"})
	if err == nil || !strings.Contains(err.Error(), "lab down") {
		t.Fatalf("up with another domain on a running lab: %v", err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// Route look-ups only, nothing is sent: the lab's traffic cannot leave the
// machine, and a laptop reaches the node's own address and nothing it would
// forward.
func TestLabTrafficStaysOnTheMachine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if out, err := h.Run(ctx, alice, "true"); err != nil {
		t.Fatalf("laptop alice: %v\n%s", err, out)
	}
	route := func(args ...string) (string, error) {
		return lab.RunCommand(ctx, append([]string{"ip"}, args...)...)
	}
	if out, err := route("-n", "tlab-node", "route", "get", "198.51.100.1"); err != nil || !strings.Contains(out, "dev tlab0") {
		t.Errorf("the node routes an outside address somewhere but its sink: %v\n%s", err, out)
	}
	for _, dst := range []string{"198.51.100.1", "10.244.0.2", "10.96.0.10", "10.208.0.1"} {
		if out, err := route("-n", "tlab-node", "route", "get", dst, "from", "10.210.0.2", "iif", "lap-alice"); err == nil {
			t.Errorf("the node forwards a laptop's packet to %s:\n%s", dst, out)
		}
	}
	if out, err := route("-n", "tlab-node", "route", "get", "10.209.0.1", "from", "10.210.0.2", "iif", "lap-alice"); err != nil || !strings.HasPrefix(out, "local 10.209.0.1") {
		t.Errorf("a laptop's packet to the node's address is not delivered locally: %v\n%s", err, out)
	}
	for _, dst := range []string{"10.244.0.2", "10.96.0.10", "10.210.0.2"} {
		if out, err := route("route", "get", dst); err == nil {
			t.Errorf("the host routes %s (a lab range) somewhere: %s", dst, out)
		}
	}
}
