//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/integration/lab"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// podIP returns the address of a ready pod of the Deployment app=name.
func podIP(t *testing.T, ns, selector string) string {
	t.Helper()
	pods, err := h.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return p.Status.PodIP
		}
	}
	t.Fatalf("no pod of %s in %s has an address", selector, ns)
	return ""
}

// fromPod runs the test app's client in a pod of deploy/echo in ns.
func fromPod(t *testing.T, ns string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := kubectl(ctx, node, append([]string{"exec", "-n", ns, "deploy/echo", "-c", "echo", "--", "/echo"}, args...)...)
	if err != nil {
		t.Fatalf("/echo %s in a pod of %s: %v\n%s", strings.Join(args, " "), ns, err, out)
	}
	return strings.TrimSpace(out)
}

// A workload that turns on its cluster, speaking tunnel's own protocol to
// the manager's port 8022, gets no stream into the cluster and learns
// nothing: a session from a pod is a sidecar or nothing.
func TestAPodCannotUseTheManager(t *testing.T) {
	installManager(t)
	attacker, victim := h.Namespace(t), h.Namespace(t)
	h.DeployEcho(t, attacker, "echo", 1)
	h.DeployEcho(t, victim, "echo", 1)
	target := podIP(t, victim, "app=echo") + ":8080"
	// By address: the name may still answer with the address of a Service
	// an earlier test deleted, for as long as CoreDNS caches it.
	managerIP := serviceIP(t, "tunnel-system", "tunnel-manager")
	manager := managerIP + ":8023" // the sidecars' port, TLS

	// The pod reaches the target itself: what it is refused below is the
	// manager's doing, not the network's.
	if out := fromPod(t, attacker, "get", "http://"+target+"/direct"); !strings.Contains(out, "path=/direct") {
		t.Fatalf("the attacker's pod reaches the target directly: %s", out)
	}
	if out := fromPod(t, attacker, "manager", manager, "tcp", target); out != "status: the manager refuses that destination" {
		t.Errorf("a TCP stream from a pod through the manager: %q, want refused", out)
	}
	// The laptops' port listens on the manager pod's loopback, for
	// port-forwards: from the network it is not there at all.
	managerPod := podIP(t, "tunnel-system", "app.kubernetes.io/name=tunnel-manager")
	if out := fromPod(t, attacker, "manager", managerPod+":8022", "tcp", target); !strings.HasPrefix(out, "dial:") {
		t.Errorf("the laptops' port from a pod: %q, want no connection", out)
	}
	for _, verb := range []string{"watch-cluster", "list"} {
		if out := fromPod(t, attacker, "manager", manager, verb); !strings.HasPrefix(out, "grpc: PermissionDenied") {
			t.Errorf("%s from a pod: %q, want PermissionDenied", verb, out)
		}
	}
}

// What a connected user reaches is what their RBAC lets them port-forward
// to: dev (rights in namespace dev only) reaches its own namespace's pods
// and Services and is refused, at once and with a reset, another
// namespace's pods, kube-system's, and the node's own addresses.
func TestConnectedUserReachesWhatTheirRBACAllows(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	ctx := context.Background()
	const own = "dev"
	const name = "reachme"
	deployEchoInDev(t, name)
	other := h.Namespace(t)
	h.DeployEcho(t, other, "echo", 1)

	dev := newLaptop(t, "reachdev", "dev")
	dev.must("connect", "-n", own)
	if out, err := dev.sh(fmt.Sprintf("curl -sS --max-time 10 http://%s/own", name)); err != nil || !strings.Contains(out, "path=/own") {
		t.Errorf("dev's own namespace by name: %v\n%s", err, out)
	}
	if out, err := dev.sh(fmt.Sprintf("curl -sS --max-time 10 http://%s:8080/own-pod", podIP(t, own, "app="+name))); err != nil || !strings.Contains(out, "path=/own-pod") {
		t.Errorf("dev's own namespace's pod: %v\n%s", err, out)
	}
	coreDNS := podIP(t, "kube-system", "k8s-app=kube-dns")
	nodes, err := h.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		t.Fatal(err)
	}
	// The node's address on the pod network (its bridge), where its kubelet
	// listens too: inside the routed pod subnet, and no pod's.
	bridge := netip.MustParsePrefix(nodes.Items[0].Spec.PodCIDR).Addr().Next()
	for what, url := range map[string]string{
		"another namespace's pod":     "http://" + podIP(t, other, "app=echo") + ":8080/other",
		"another namespace's Service": "http://" + serviceIP(t, other, "echo") + "/other-svc",
		"a kube-system pod":           "http://" + coreDNS + ":8080/health",
		"the node's kubelet":          "https://" + bridge.String() + ":10250/healthz",
	} {
		start := time.Now()
		out, err := dev.sh("curl -sSk --max-time 10 " + url)
		took := time.Since(start)
		if err == nil {
			t.Errorf("dev reached %s (%s):\n%s", what, url, out)
			continue
		}
		// curl 56 (reset) or 7 (refused), not 28 (timed out): the laptop's
		// client hears no at once.
		if code := exitStatus(err); code != 56 && code != 7 {
			t.Errorf("dev to %s: curl exit %d after %s, want a reset:\n%s", what, code, took.Round(time.Millisecond), out)
		}
	}
	// The laptop counts them, in tunnel status: over the port-forward as
	// the manager answers, over WireGuard with the next probe's answer
	// (a second at most).
	eventually(t, 3*time.Second, "tunnel status counts the refused dials", func() (bool, string) {
		var st struct {
			Traffic struct {
				DialsRefused string `json:"dialsRefused"`
			} `json:"traffic"`
		}
		raw := dev.must("status", "-o", "json")
		return json.Unmarshal([]byte(raw), &st) == nil && st.Traffic.DialsRefused != "" && st.Traffic.DialsRefused != "0", raw
	})
	// The refusals are the manager's, counted where the admin looks.
	if out := managerMetric(t, `tunnel_manager_refused_total{reason="reach",session="laptop"}`); out == "" || out == "0" {
		t.Errorf("the manager counted no refused reach: %q", out)
	}
}

// managerMetric reads one series of the manager's /metrics, "" if absent.
func managerMetric(t *testing.T, series string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := kubectl(ctx, node, "get", "--raw", "/api/v1/namespaces/tunnel-system/services/tunnel-manager:metrics/proxy/metrics")
	if err != nil {
		t.Fatalf("read the manager's metrics: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// daemonClient talks to a laptop's daemon over its socket, as any program
// of the laptop's user could, without the CLI and its checks.
func daemonClient(t *testing.T, l *laptop) daemonpb.DaemonClient {
	t.Helper()
	netns, err := l.sh("readlink /proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.Trim(strings.TrimPrefix(strings.TrimSpace(netns), "net:"), "[]")
	cc, err := grpc.NewClient("unix://"+daemonpb.SocketIn("/run/tunnel/netns-"+id), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return daemonpb.NewDaemonClient(cc)
}

// dev has no rights in the victim's namespace. Calling its own daemon's
// API directly, past the CLI's check, it asks for a mirror (a copy of every
// request, credentials included) and a global intercept of a workload that
// already has the sidecar: the manager asks the API server and refuses.
func TestDaemonAPICannotInterceptWithoutRights(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	victim := h.Namespace(t)
	h.DeployEcho(t, victim, "echo", 1)
	ip := serviceIP(t, victim, "echo")
	admin := newLaptop(t, "victimadm", "admin")
	admin.must("connect", "-n", victim)
	startLocalServer(t, admin, "laptop-admin", 7081)
	admin.must("intercept", "echo", "--port", "7081:http", "--http-header", "x-tunnel-dev=admin", "--name", "admins")

	dev := newLaptop(t, "spy", "dev")
	dev.must("connect", "-n", "dev")
	spyServer := startLocalServer(t, dev, "laptop-spy", 7082)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := daemonClient(t, dev)
	for _, mode := range []managerpb.InterceptMode{managerpb.InterceptMode_MIRROR, managerpb.InterceptMode_GLOBAL} {
		_, err := d.Intercept(ctx, &daemonpb.InterceptRequest{LocalPort: 7082, Spec: &managerpb.InterceptSpec{
			Name: "spy-" + strings.ToLower(mode.String()), Namespace: victim, Workload: "echo", Port: lab.EchoHTTPPort, Mode: mode}})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may not") || !strings.Contains(err.Error(), "patch deployments.apps") {
			t.Errorf("dev's %s of %s/echo through the daemon's API: %v, want refused naming the missing verb", mode, victim, err)
		}
	}
	for i := range 5 {
		fromNode(t, fmt.Sprintf("http://%s/secret-%d", ip, i), "Authorization: Bearer s3cret")
	}
	if got := fromNode(t, "http://"+ip+"/admins", "x-tunnel-dev: admin"); !strings.Contains(got, "pod=laptop-admin") {
		t.Errorf("the admin's own intercept after dev's attempts: %s", got)
	}
	time.Sleep(time.Second) // a mirror is sent after the answer
	if reqs := spyServer.requests(); strings.Contains(reqs, "secret") {
		t.Errorf("dev's local server got the victim's requests:\n%s", reqs)
	}
}

// The daemon runs as root and reads no file its caller names: a kubeconfig
// sent straight to its socket with tokenFile: /root/... is refused in one
// sentence, before anything is read. Through the CLI the same kubeconfig
// works: the CLI reads the token as the user and inlines it.
func TestDaemonReadsNoFileForItsCaller(t *testing.T) {
	installManager(t)
	l := newLaptop(t, "rootfiles", "admin")
	l.must("connect")
	d := daemonClient(t, l)
	kc := writeKubeconfig(t, func(c *clientcmdapi.Config) {
		for _, a := range c.AuthInfos {
			a.ClientCertificateData, a.ClientKeyData = nil, nil
			a.TokenFile = "/root/.kube/stolen-token"
		}
	})
	raw, err := os.ReadFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = d.Connect(ctx, &daemonpb.ConnectRequest{Kubeconfig: raw})
	if err == nil || !strings.Contains(err.Error(), "tokenFile") || !strings.Contains(err.Error(), "/root/.kube/stolen-token") {
		t.Errorf("a kubeconfig naming /root's token file, sent to the daemon: %v, want refused naming the file", err)
	}
	if st := l.must("status"); !strings.Contains(st, "connected") {
		t.Errorf("the refused call changed the connection:\n%s", st)
	}
}

// Another local user of the laptop cannot drive the daemon: not through the
// socket's folder, and not even when the socket file is opened to all
// (the daemon asks the kernel who connects).
func TestAnotherLocalUserCannotDriveTheDaemon(t *testing.T) {
	installManager(t)
	l := newLaptop(t, "shared", "admin")
	l.must("connect")
	const nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups "
	out, err := l.sh(nobody + h.Tunnel(t) + " status")
	if err == nil || !strings.Contains(out, "belongs to another user") {
		t.Errorf("another user's tunnel status: %v\n%s", err, out)
	}
	// Open the way on the file system, as a mistake would: the daemon
	// still refuses the connection.
	netns, err := l.sh("readlink /proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	sock := daemonpb.SocketIn("/run/tunnel/netns-" + strings.Trim(strings.TrimPrefix(strings.TrimSpace(netns), "net:"), "[]"))
	for _, p := range []string{filepath.Dir(sock), sock} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	out, err = l.sh(nobody + h.Tunnel(t) + " quit")
	if st := l.must("status"); !strings.Contains(st, "Session:    connected") {
		t.Errorf("another user's quit through an open socket took effect (%v: %s):\n%s", err, out, st)
	}
}

// deploySink runs a pod that accepts connections on 9100 and never reads
// them, and returns its address.
func deploySink(t *testing.T, ns string) string {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "sink"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "sink", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(1)),
					Containers:                    []corev1.Container{{Name: "sink", Image: lab.EchoImage, Command: []string{"/echo", "hold", ":9100"}}},
				},
			},
		},
	}
	if _, err := h.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ip string
	eventually(t, time.Minute, "the sink runs", func() (bool, string) {
		pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=sink"})
		if err != nil || len(pods.Items) == 0 {
			return false, fmt.Sprint(err)
		}
		p := pods.Items[0]
		ip = p.Status.PodIP
		return p.Status.Phase == corev1.PodRunning && ip != "", string(p.Status.Phase)
	})
	return ip
}

// One laptop opens 2,000 connections at once through the tunnel to a pod
// that never reads, and pushes 256 KiB on each: the manager serves its
// share (MaxStreams), refuses the rest, stays within its memory limit, and
// another laptop's requests go on as before.
func TestOneLaptopCannotExhaustTheManager(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	sink := deploySink(t, ns)
	greedy, other := newLaptop(t, "greedy", "admin"), newLaptop(t, "modest", "admin")
	greedy.must("connect", "-n", ns)
	other.must("connect", "-n", ns)
	refusedBefore := managerMetric(t, `tunnel_manager_refused_total{reason="limit",session="laptop"}`)

	done := make(chan string, 1)
	go func() {
		out, err := greedy.sh(fmt.Sprintf("ulimit -n 8192; %s flood %s:9100 2000 262144 25s", h.EchoClient(), sink))
		done <- fmt.Sprintf("%s %v", strings.TrimSpace(out), err)
	}()
	time.Sleep(10 * time.Second) // the flood is open and holding
	for i := range 5 {
		if out, err := other.sh(fmt.Sprintf("curl -sS --max-time 5 http://echo/during-%d", i)); err != nil || !strings.Contains(out, "path=/during") {
			t.Errorf("another laptop during the flood: %v\n%s", err, out)
		}
	}
	rss := managerMetric(t, "process_resident_memory_bytes")
	flood := <-done
	t.Logf("flood: %s; the manager's RSS while it held: %s bytes", flood, rss)
	var opened, refused, sent int64
	if _, err := fmt.Sscanf(flood, "opened %d refused %d sent %d", &opened, &refused, &sent); err != nil {
		t.Fatalf("the flood's report %q: %v", flood, err)
	}
	const limit = 1024 // the manager's default MaxStreams
	if opened > limit || refused < 2000-limit {
		t.Errorf("the manager served %d of 2000 streams of one session, refused %d: want at most its cap of %d", opened, refused, limit)
	}
	if refusedAfter := managerMetric(t, `tunnel_manager_refused_total{reason="limit",session="laptop"}`); refusedAfter == refusedBefore {
		t.Errorf("the manager counted no refusal for the limit (%s before, %s after)", refusedBefore, refusedAfter)
	}
	var rssBytes float64
	if _, err := fmt.Sscanf(rss, "%g", &rssBytes); err != nil || rssBytes <= 0 || rssBytes > 1<<30 {
		t.Errorf("the manager's RSS during the flood: %q, want within its 1 GiB limit", rss)
	}
	pods, err := h.Client.CoreV1().Pods("tunnel-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tunnel-manager"})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the manager after the flood: %v %+v", err, pods)
	}
	// The flood's connections stay half-closed (the sink neither answers
	// nor closes) until the manager's half-closed bound, 2 minutes: the
	// flooding laptop waits that long; nobody else waits at all.
	if out, err := other.sh("curl -sS --max-time 5 http://echo/after"); err != nil || !strings.Contains(out, "path=/after") {
		t.Errorf("another laptop after the flood: %v\n%s", err, out)
	}
}
