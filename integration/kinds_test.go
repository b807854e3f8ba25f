//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/integration/lab"
	"tunnel.dev/tunnel/rollout"
	"tunnel.dev/tunnel/workload"
)

// Every kind of workload a team runs is intercepted as a Deployment is:
// a global intercept answered by the laptop, the app's answer when the
// laptop's process is down, a personal intercept that takes only its
// header's requests, and uninstall giving back the workload and its
// Service exactly. The workloads are named as a user would: by KIND/NAME,
// by a bare name, or by the Service in front of them.
func TestInterceptEveryWorkloadKind(t *testing.T) {
	installManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := lab.EnsureArgoRollouts(ctx, h.Lab, h.Client); err != nil {
		t.Fatal(err)
	}
	ns := h.Namespace(t)
	l := newLaptop(t, "kinds", "admin")
	l.must("connect", "-n", ns)
	for _, tc := range []struct {
		kind, name, service string
		replicas            int32
		target              string // what the user types
	}{
		{"StatefulSet", "db", "db-svc", 2, "statefulset/db"},
		{"ReplicaSet", "plain", "plain-svc", 2, "plain"},
		{"DaemonSet", "agent", "agent-svc", 1, "agent-svc"}, // by its Service
		{"Rollout", "shop", "shop-svc", 2, "rollout/shop"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			if err := lab.DeployEchoAs(ctx, h.Lab, h.Client, h.Dynamic, ns, tc.kind, tc.name, tc.service, tc.replicas); err != nil {
				t.Fatal(err)
			}
			ref := strings.ToLower(tc.kind) + "/" + tc.name
			before := kindState(t, ns, tc.kind, tc.name, tc.service)
			ip := serviceIP(t, ns, tc.service)
			who := "laptop-" + tc.name

			srv := startLocalServer(t, l, who, 7070)
			out := l.must("intercept", tc.target, "--port", "7070:http", "--name", tc.name+"-global")
			t.Logf("intercept %s:\n%s", tc.target, out)
			for i := range 2 * tc.replicas {
				if got := fromNode(t, fmt.Sprintf("http://%s/global-%d", ip, i)); !strings.Contains(got, "pod="+who) {
					t.Fatalf("request %d to the intercepted %s: %s", i, tc.kind, got)
				}
			}
			if w, ok := list(t, l, ns)[ref]; !ok || !w.Sidecar || len(w.Intercepts) != 1 {
				t.Errorf("list shows %s as %+v", ref, w)
			}
			srv.stop()
			if got := fromNode(t, "http://"+ip+"/fallback"); !strings.Contains(got, "pod="+tc.name+"-") {
				t.Errorf("with the laptop's process down the app should answer: %s", got)
			}
			l.must("leave", tc.name+"-global")

			startLocalServer(t, l, who, 7070)
			l.must("intercept", tc.target, "--port", "7070:http", "--name", tc.name+"-mine", "--http-header", "x-tunnel-dev="+tc.name)
			for i := range 2 * tc.replicas {
				if got := fromNode(t, fmt.Sprintf("http://%s/mine-%d", ip, i), "x-tunnel-dev: "+tc.name); !strings.Contains(got, "pod="+who) {
					t.Errorf("request %d with the header: %s", i, got)
				}
				if got := fromNode(t, fmt.Sprintf("http://%s/theirs-%d", ip, i)); !strings.Contains(got, "pod="+tc.name+"-") {
					t.Errorf("request %d without the header: %s", i, got)
				}
			}
			l.must("leave", tc.name+"-mine")

			// Replaced: one pod, its app container idle, the laptop the only
			// consumer; leave puts the workload back exactly.
			withSidecar := kindState(t, ns, tc.kind, tc.name, tc.service)
			out = l.must("intercept", tc.target, "--port", "7070:http", "--name", tc.name+"-only", "--replace")
			t.Logf("intercept --replace:\n%s", out)
			idlePods := 1 // one replica; a StatefulSet keeps its pods, a DaemonSet one per node
			if tc.kind == "StatefulSet" {
				idlePods = int(tc.replicas)
			}
			replaced(t, ns, tc.name, idlePods)
			for i := range 4 {
				if got := fromNode(t, fmt.Sprintf("http://%s/only-%d", ip, i)); !strings.Contains(got, "pod="+who) {
					t.Errorf("request %d to the replaced %s: %s", i, tc.kind, got)
				}
			}
			if w := list(t, l, ns)[ref]; w.ReplacedFor != tc.name+"-only" {
				t.Errorf("list shows %s as %+v, want it replaced", ref, w)
			}
			l.must("leave", tc.name+"-only")
			if after := kindState(t, ns, tc.kind, tc.name, tc.service); after != withSidecar {
				t.Errorf("leave did not put the replaced %s back exactly:\nbefore:\n%s\nafter:\n%s", tc.kind, withSidecar, after)
			}
			eventually(t, 30*time.Second, "the app answers after the replace", func() (bool, string) {
				got := fromNode(t, "http://"+ip+"/after-replace")
				return strings.Contains(got, "pod="+tc.name+"-"), got
			})

			uctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if out, err := h.Run(uctx, node, h.Tunnel(t), "uninstall", "--agent", ref, "-n", ns); err != nil {
				t.Fatalf("uninstall --agent %s: %v\n%s", ref, err, out)
			}
			if after := kindState(t, ns, tc.kind, tc.name, tc.service); after != before {
				t.Errorf("uninstall did not restore the %s exactly:\nbefore:\n%s\nafter:\n%s", tc.kind, before, after)
			}
			eventually(t, time.Minute, "every pod runs without the sidecar", func() (bool, string) {
				pods, err := h.Client.CoreV1().Pods(ns).List(uctx, metav1.ListOptions{LabelSelector: "app=" + tc.name})
				if err != nil {
					return false, err.Error()
				}
				var names []string
				for _, p := range pods.Items {
					names = append(names, fmt.Sprintf("%s:%d", p.Name, len(p.Spec.Containers)))
					if len(p.Spec.Containers) != 1 {
						return false, strings.Join(names, " ")
					}
				}
				return len(pods.Items) == int(tc.replicas), strings.Join(names, " ")
			})
			// A DaemonSet's one pod on the node is replaced, not surged:
			// its Service answers nothing for a moment.
			eventually(t, 30*time.Second, "the app answers after uninstall", func() (bool, string) {
				ctx, cancel := context.WithTimeout(uctx, 5*time.Second)
				defer cancel()
				out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "2", "http://"+ip+"/after")
				return err == nil && strings.Contains(out, "pod="+tc.name+"-"), out
			})
		})
	}
}

// kindState is what uninstall must give back exactly: the workload's spec,
// labels and annotations (but what its controller writes there), and its
// Services'.
func kindState(t *testing.T, ns, kind, name string, services ...string) string {
	t.Helper()
	ctx := context.Background()
	k, ok := workload.KindNamed(kind)
	if !ok {
		t.Fatalf("no workload kind %s", kind)
	}
	u, err := h.Dynamic.Resource(k.Resource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	annots := map[string]string{}
	for k, v := range u.GetAnnotations() {
		switch k {
		case "deployment.kubernetes.io/revision", "rollout.argoproj.io/revision", "deprecated.daemonset.template.generation":
		default:
			annots[k] = v
		}
	}
	state := map[string]any{
		"workload": map[string]any{"spec": u.Object["spec"], "annotations": annots, "labels": u.GetLabels(),
			"tunnel's updates": tunnelUpdates(u.GetManagedFields())},
	}
	for _, name := range services {
		svc, err := h.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		state["service/"+name] = map[string]any{"spec": svc.Spec, "annotations": svc.Annotations, "labels": svc.Labels,
			"tunnel's updates": tunnelUpdates(svc.ManagedFields)}
	}
	b, err := json.MarshalIndent(state, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tunnelUpdates names tunnel's field managers that own fields by update:
// once tunnel has put an object back, none may (their owner's next
// server-side apply of those fields would conflict with tunnel).
func tunnelUpdates(entries []metav1.ManagedFieldsEntry) []string {
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Manager, "tunnel-") && e.Operation == metav1.ManagedFieldsOperationUpdate {
			out = append(out, e.Manager)
		}
	}
	return out
}

// A StatefulSet's clients that dial its pods by name (web-0.web.NS, from
// its headless Service) reach the intercept as those of its Service's
// address do: the capture is made inside the pods (an init container's
// redirect), leaves the Services as they are, and goes with the sidecar.
func TestInterceptThroughAHeadlessService(t *testing.T) {
	installManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := h.Namespace(t)
	if err := lab.DeployEchoAs(ctx, h.Lab, h.Client, h.Dynamic, ns, "StatefulSet", "web", "web-http", 2); err != nil {
		t.Fatal(err)
	}
	governing := lab.EchoService(ns, "web", map[string]string{"app": "web"})
	governing.Spec.ClusterIP = corev1.ClusterIPNone
	if _, err := h.Client.CoreV1().Services(ns).Create(ctx, governing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := kindState(t, ns, "StatefulSet", "web", "web", "web-http")
	l := newLaptop(t, "headless", "admin")
	l.must("connect", "-n", ns)
	startLocalServer(t, l, "laptop-headless", 7070)
	// Named by its Service with an address, as a user names what they
	// intercept: the headless Service's clients are taken all the same.
	l.must("intercept", "web-http", "--port", "7070:http")

	byName := func(pod, want string) {
		t.Helper()
		url := fmt.Sprintf("http://%s.web.%s:%d/by-name", pod, ns, lab.EchoHTTPPort)
		eventually(t, 15*time.Second, "a request to "+url+" answered by "+want, func() (bool, string) {
			out, _ := l.sh("curl -sS --max-time 5 " + url)
			return strings.Contains(out, "pod="+want), out
		})
	}
	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil || len(pods.Items) != 2 {
		t.Fatalf("the StatefulSet's pods: %v", err)
	}
	for _, p := range pods.Items {
		if len(p.Spec.InitContainers) != 1 {
			t.Errorf("pod %s has init containers %v, want tunnel's redirect", p.Name, p.Spec.InitContainers)
		}
		byName(p.Name, "laptop-headless")
		// From the node, to the pod's own address and the app's port.
		if got := fromNode(t, fmt.Sprintf("http://%s:%d/by-address", p.Status.PodIP, lab.EchoHTTPPort)); !strings.Contains(got, "pod=laptop-headless") {
			t.Errorf("a request to pod %s's address: %s", p.Name, got)
		}
	}
	if got := fromNode(t, "http://"+serviceIP(t, ns, "web-http")+"/by-service"); !strings.Contains(got, "pod=laptop-headless") {
		t.Errorf("a request to the Service's address: %s", got)
	}
	l.must("leave", "web-http")
	byName("web-0", "web-0")

	uctx, ucancel := context.WithTimeout(ctx, 3*time.Minute)
	defer ucancel()
	if out, err := h.Run(uctx, node, h.Tunnel(t), "uninstall", "--agent", "statefulset/web", "-n", ns); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if after := kindState(t, ns, "StatefulSet", "web", "web", "web-http"); after != before {
		t.Errorf("uninstall did not restore the StatefulSet and its Services exactly:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	byName("web-1", "web-1")
}

// replaced waits until the workload app runs n pods, whose app containers
// are the agent's idle stand-in.
func replaced(t *testing.T, ns, app string, n int) {
	t.Helper()
	eventually(t, 2*time.Minute, fmt.Sprintf("%s runs %d pods, idle", app, n), func() (bool, string) {
		pods, err := h.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err.Error()
		}
		var live []string
		idle := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			live = append(live, p.Name)
			if len(p.Spec.Containers) > 0 && strings.Join(p.Spec.Containers[0].Args, " ") == "idle" {
				idle++
			}
		}
		return len(live) == n && idle == n, fmt.Sprintf("pods %v, %d idle", live, idle)
	})
}

// A workload replaced by a laptop whose daemon is killed is put back at the
// laptop's next connect, exactly, and the connect says so.
func TestReplacedWorkloadIsPutBackAfterACrash(t *testing.T) {
	ns, ip, l := connectedToEcho(t, "replacer", 2)
	startLocalServer(t, l, "laptop-replacer", 7074)
	l.must("intercept", "echo", "--port", "7074:http") // the sidecar in, first
	l.must("leave", "echo-http")
	before := workloadState(t, ns, "echo", "echo")
	l.must("intercept", "echo", "--port", "7074:http", "--replace")
	replaced(t, ns, "echo", 1)
	if got := fromNode(t, "http://"+ip+"/replaced"); !strings.Contains(got, "pod=laptop-replacer") {
		t.Fatalf("the replaced workload: %s", got)
	}
	if out, err := l.sh(`kill -9 $(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock)`); err != nil {
		t.Fatalf("kill -9 the daemon: %v\n%s", err, out)
	}
	// Until the laptop is back, the replaced pod answers nothing.
	out := l.must("connect", "-n", ns)
	if !strings.Contains(out, "Put deployment "+ns+"/echo back as it was before intercept echo-http replaced it.") {
		t.Errorf("connect after the crash says:\n%s", out)
	}
	if after := workloadState(t, ns, "echo", "echo"); after != before {
		t.Errorf("the crashed laptop's replace was not put back exactly:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	eventually(t, 30*time.Second, "the app answers again", func() (bool, string) {
		got := fromNode(t, "http://"+ip+"/back")
		return strings.Contains(got, "pod=echo-"), got
	})
}

// A queue worker has no Service: --replace takes its place all the same.
// Its containers go idle (one replica), the laptop gets the pod's
// environment, and leave and uninstall put it back exactly.
func TestReplaceAWorkerNoServiceSelects(t *testing.T) {
	installManager(t)
	ctx := context.Background()
	ns := h.Namespace(t)
	labels := map[string]string{"app": "worker"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "worker", Namespace: ns},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: lab.EchoTemplate(labels)}}
	if _, err := h.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := func(what string) {
		t.Helper()
		eventually(t, 2*time.Minute, what, func() (bool, string) {
			pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=worker"})
			if err != nil {
				return false, err.Error()
			}
			ready := 0
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && rollout.Ready(&p) && strings.Join(p.Spec.Containers[0].Args, " ") != "idle" {
					ready++
				}
			}
			return ready == 2 && len(pods.Items) == 2, fmt.Sprintf("%d of %d pods ready, running their own process", ready, len(pods.Items))
		})
	}
	running("the worker's 2 pods run")
	before := kindState(t, ns, "Deployment", "worker")

	l := newLaptop(t, "worker", "admin")
	l.must("connect", "-n", ns)
	env := filepath.Join(t.TempDir(), "worker.env")
	out := l.must("intercept", "worker", "--replace", "--env-file", env)
	if !strings.Contains(out, "no Service selects the pods of deployment "+ns+"/worker") || !strings.Contains(out, "deployment "+ns+"/worker is replaced by this machine") {
		t.Errorf("intercept --replace of a worker says:\n%s", out)
	}
	replaced(t, ns, "worker", 1)
	if b, err := os.ReadFile(env); err != nil || !strings.Contains(string(b), "POD_NAME=worker-") {
		t.Errorf("the worker's environment on the laptop: %v\n%s", err, b)
	}
	if w := list(t, l, ns)["worker"]; w.ReplacedFor != "worker-8080" {
		t.Errorf("list shows the worker as %+v, want it replaced for worker-8080", w)
	}
	l.must("leave", "worker-8080")
	running("the worker runs its own process again after leave")

	uctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if out, err := h.Run(uctx, node, h.Tunnel(t), "uninstall", "--agent", "worker", "-n", ns); err != nil {
		t.Fatalf("uninstall --agent worker: %v\n%s", err, out)
	}
	if after := kindState(t, ns, "Deployment", "worker"); after != before {
		t.Errorf("the worker is not as it was:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
