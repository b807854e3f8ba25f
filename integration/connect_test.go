//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// laptop is one developer's machine in a test: the tunnel binary run in
// its namespace, as admin or dev.
type laptop struct {
	t   *testing.T
	opt lab.ExecOptions
	bin string
}

func newLaptop(t *testing.T, name, user string) *laptop {
	l := &laptop{t: t, opt: lab.ExecOptions{Laptop: name, User: user}, bin: h.Tunnel(t)}
	if out, err := l.sh("true"); err != nil { // makes the laptop
		t.Fatalf("laptop %s: %v\n%s", name, err, out)
	}
	l.run("quit") // a connection an earlier run (or a person) left
	t.Cleanup(func() { l.run("quit") })
	return l
}

func (l *laptop) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return h.Run(ctx, l.opt, append([]string{l.bin}, args...)...)
}

func (l *laptop) must(args ...string) string {
	l.t.Helper()
	out, err := l.run(args...)
	if err != nil {
		l.t.Fatalf("tunnel %s in laptop %s: %v\n%s", strings.Join(args, " "), l.opt.Laptop, err, out)
	}
	return out
}

// sh runs a command line in the laptop.
func (l *laptop) sh(script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return h.Run(ctx, l.opt, "sh", "-c", script)
}

func (l *laptop) resolvConf() string {
	l.t.Helper()
	b, err := os.ReadFile("/etc/netns/tlab-laptop-" + l.opt.Laptop + "/resolv.conf")
	if err != nil {
		l.t.Fatal(err)
	}
	return string(b)
}

// installManager installs the manager as admin; it is idempotent.
func installManager(t *testing.T, extra ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := append([]string{h.Tunnel(t), "install"}, extra...)
	if out, err := h.Run(ctx, node, args...); err != nil {
		t.Fatalf("tunnel install: %v\n%s", err, out)
	}
}

func TestConnectReachesServicesAndPodsByNameAndAddress(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 2)
	ctx := context.Background()
	svc, err := h.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("list pods: %v", err)
	}
	podIP := pods.Items[0].Status.PodIP

	l := newLaptop(t, "carol", "admin")
	before := l.resolvConf()
	l.must("connect", "-n", ns)
	domain := h.Config.ClusterDomain
	echo := h.EchoClient()

	for name, script := range map[string]string{
		"service by namespaced name": fmt.Sprintf("curl -sS --max-time 10 http://echo.%s/by-name", ns),
		"service by short name":      "curl -sS --max-time 10 http://echo/short",
		"service by full name":       fmt.Sprintf("curl -sS --max-time 10 http://echo.%s.svc.%s/full", ns, domain),
		"service by address":         fmt.Sprintf("curl -sS --max-time 10 http://%s/ip", svc.Spec.ClusterIP),
		"pod by address":             fmt.Sprintf("curl -sS --max-time 10 http://%s:%d/pod", podIP, lab.EchoHTTPPort),
	} {
		out, err := l.sh(script)
		if err != nil || !strings.Contains(out, "pod=echo-") {
			t.Errorf("%s: %s: %v\n%s", name, script, err, out)
		}
	}
	for _, proto := range []string{"tcp", "udp"} {
		addr := fmt.Sprintf("echo.%s:%d", ns, lab.EchoTCPPort)
		if proto == "udp" {
			addr = fmt.Sprintf("%s:%d", svc.Spec.ClusterIP, lab.EchoUDPPort)
		}
		out, err := l.sh(fmt.Sprintf("%s %s %s", echo, proto, addr))
		if err != nil || strings.TrimSpace(out) != "ping" {
			t.Errorf("%s echo through %s: %v\n%s", proto, addr, err, out)
		}
	}

	// DNS as a pod sees it: SRV and PTR records, with the cluster's TTLs.
	out, err := l.sh(fmt.Sprintf("dig +short SRV _http._tcp.echo.%s.svc.%s", ns, domain))
	if err != nil || !strings.Contains(out, fmt.Sprintf("80 echo.%s.svc.%s.", ns, domain)) {
		t.Errorf("dig SRV: %v\n%s", err, out)
	}
	out, err = l.sh("dig +short -x " + svc.Spec.ClusterIP)
	if err != nil || !strings.Contains(out, fmt.Sprintf("echo.%s.svc.%s.", ns, domain)) {
		t.Errorf("dig PTR of the service address: %v\n%s", err, out)
	}
	// Names outside the cluster still go where they went before.
	out, err = l.sh("dig +short upstream.lab.test")
	if err != nil || strings.TrimSpace(out) != "10.209.0.1" {
		t.Errorf("dig upstream.lab.test while connected: %v\n%s", err, out)
	}

	var st struct {
		Connected     bool     `json:"connected"`
		Namespace     string   `json:"namespace"`
		RoutedSubnets []string `json:"routedSubnets"`
		Traffic       struct {
			TCPFlowsTotal string `json:"tcpFlowsTotal"`
		} `json:"traffic"`
	}
	raw := l.must("status", "-o", "json")
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, raw)
	}
	if !st.Connected || st.Namespace != ns || len(st.RoutedSubnets) == 0 || st.Traffic.TCPFlowsTotal == "0" {
		t.Errorf("status: %+v", st)
	}

	l.must("quit")
	if after := l.resolvConf(); after != before {
		t.Errorf("quit left resolv.conf changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out, err := l.sh("ip -o link show tunnel0"); err == nil {
		t.Errorf("quit left the TUN device: %s", out)
	}
	if out, err := l.sh(fmt.Sprintf("curl -sS --max-time 3 http://%s/", svc.Spec.ClusterIP)); err == nil {
		t.Errorf("the cluster is still reachable after quit: %s", out)
	}
}

func TestKillNineThenRepair(t *testing.T) {
	installManager(t)
	l := newLaptop(t, "dave", "admin")
	before := l.resolvConf()
	for _, next := range []string{"quit", "connect"} {
		l.must("connect")
		if l.resolvConf() == before {
			t.Fatal("connect did not change resolv.conf")
		}
		if out, err := l.sh(`kill -9 $(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock)`); err != nil {
			t.Fatalf("kill -9 the daemon: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
		if out, err := l.sh("ip -o link show tunnel0"); err == nil {
			t.Errorf("the TUN device outlived its daemon: %s", out)
		}
		out := l.must(next)
		// What quit repaired is said in sentences, not log lines.
		if next == "quit" && (!strings.Contains(out, "Not connected. Restored /etc/resolv.conf as it was before tunnel connected") || strings.Contains(out, "level=")) {
			t.Errorf("quit after kill -9 says:\n%s", out)
		}
		if next == "connect" {
			if out, err := l.sh("dig +short kubernetes.default.svc." + h.Config.ClusterDomain); err != nil || strings.TrimSpace(out) == "" {
				t.Errorf("after repair and connect, cluster DNS: %v\n%s", err, out)
			}
			l.must("quit")
		}
		if after := l.resolvConf(); after != before {
			t.Errorf("after kill -9 and %s, resolv.conf differs:\nbefore:\n%s\nafter:\n%s", next, before, after)
		}
	}
}

func TestSessionSurvivesManagerPodDeletion(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	l := newLaptop(t, "erin", "admin")
	l.must("connect", "-n", ns)
	if out, err := l.sh("curl -sS --max-time 10 http://echo/"); err != nil {
		t.Fatalf("curl before the deletion: %v\n%s", err, out)
	}
	ctx := context.Background()
	pods, err := h.Client.CoreV1().Pods("tunnel-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tunnel-manager"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("find the manager pod: %v", err)
	}
	for _, p := range pods.Items {
		if err := h.Client.CoreV1().Pods("tunnel-system").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A curl loop: new connections work again within seconds.
	start := time.Now()
	out, err := l.sh(`for i in $(seq 1 300); do curl -s --max-time 2 http://echo/again && exit 0; sleep 0.1; done; exit 1`)
	if err != nil || !strings.Contains(out, "path=/again") {
		t.Fatalf("no answer within a minute of deleting the manager pod: %v\n%s\n%s", err, out, l.must("status"))
	}
	t.Logf("connections worked again %s after the manager pod was deleted", time.Since(start).Round(100*time.Millisecond))
	// The curl may have gone through the old pod while it was still
	// terminating: the session must be back on the new one within seconds,
	// and carry new connections.
	eventually(t, 30*time.Second, "the session is connected again", func() (bool, string) {
		st := l.must("status")
		return strings.Contains(st, "Session:    connected"), st
	})
	if out, err := l.sh("curl -sS --max-time 10 http://echo/after-reconnect"); err != nil || !strings.Contains(out, "path=/after-reconnect") {
		t.Errorf("after the session came back: %v\n%s", err, out)
	}
}

func TestDevUserConnectsOnceAllowed(t *testing.T) {
	installManager(t)
	// Whoever was allowed before, nobody is now.
	err := h.Client.RbacV1().RoleBindings("tunnel-system").Delete(context.Background(), "tunnel-client", metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	dev := newLaptop(t, "frank", "dev")
	before := dev.resolvConf()
	out, err := dev.run("connect", "-n", "dev")
	if err == nil || !strings.Contains(out, "tunnel install --allow-user") {
		t.Fatalf("connect as dev before an admin allowed it: %v\n%s", err, out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("the refusal is more than one sentence:\n%s", out)
	}
	if dev.resolvConf() != before {
		t.Fatal("a refused connect changed resolv.conf")
	}
	installManager(t, "--allow-user", "dev")
	dev.must("connect", "-n", "dev")
	if out, err := dev.sh("dig +short kubernetes.default.svc." + h.Config.ClusterDomain); err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("dev's cluster DNS: %v\n%s", err, out)
	}
}

func TestTwoLaptopsAtOnce(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	a, b := newLaptop(t, "gina", "admin"), newLaptop(t, "hal", "admin")
	a.must("connect", "-n", ns)
	b.must("connect", "-n", ns)
	for _, l := range []*laptop{a, b} {
		if out, err := l.sh("curl -sS --max-time 10 http://echo/" + l.opt.Laptop); err != nil || !strings.Contains(out, "path=/"+l.opt.Laptop) {
			t.Errorf("laptop %s: %v\n%s", l.opt.Laptop, err, out)
		}
	}
	a.must("quit")
	if out, err := b.sh("curl -sS --max-time 10 http://echo/still"); err != nil || !strings.Contains(out, "path=/still") {
		t.Errorf("laptop hal lost the cluster when gina quit: %v\n%s", err, out)
	}
}
