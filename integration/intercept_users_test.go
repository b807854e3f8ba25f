//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
	"tunnel.dev/tunnel/rpc"
)

// Two developers, two Kubernetes users (admin and the lab's dev), one
// Service: each takes the requests with their own header; nobody can end,
// take over or read the other's intercept; dev is refused where their
// permissions end.
// deployEchoInDev runs the test app as NAME in namespace dev, the one the
// lab's dev user may work in, until the test ends.
func deployEchoInDev(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if err := lab.DeployEcho(ctx, h.Lab, h.Client, "dev", name, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.Client.AppsV1().Deployments("dev").Delete(ctx, name, metav1.DeleteOptions{})
		_ = h.Client.CoreV1().Services("dev").Delete(ctx, name, metav1.DeleteOptions{})
	})
}

func TestTwoUsersShareAServiceWithPersonalIntercepts(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	const ns, name = "dev", "shared"
	ctx := context.Background()
	deployEchoInDev(t, name)
	ip := serviceIP(t, ns, name)

	alice, bob := newLaptop(t, "alice", "admin"), newLaptop(t, "bob", "dev")
	alice.must("connect", "-n", ns)
	bob.must("connect", "-n", ns)
	aliceSrv := startLocalServer(t, alice, "laptop-alice", 7080)
	startLocalServer(t, bob, "laptop-bob", 7080)

	// dev may not change workloads in default: one sentence naming what is missing.
	out, err := bob.run("intercept", "echo", "-n", "default", "--port", "7080")
	if err == nil || !strings.Contains(out, "you may not") || !strings.Contains(out, "namespace default") {
		t.Errorf("dev intercepting in default: %v\n%s", err, out)
	}

	alice.must("intercept", name, "--port", "7080:http", "--http-header", "x-tunnel-dev=alice", "--name", "alice")
	out = bob.must("intercept", name, "--port", "7080:http", "--http-header", "x-tunnel-dev", "--name", "bob")
	// bob's value was made up and printed: "requests with X-Tunnel-Dev: <value>".
	_, after, ok := strings.Cut(out, "X-Tunnel-Dev: ")
	bobValue, _, _ := strings.Cut(after, " ")
	if !ok || bobValue == "" {
		t.Fatalf("a made-up header value is printed:\n%s", out)
	}

	for header, want := range map[string]string{
		"x-tunnel-dev: alice":       "pod=laptop-alice",
		"x-tunnel-dev: " + bobValue: "pod=laptop-bob",
		"x-tunnel-dev: carol":       "pod=" + name + "-",
		"x-something-else: alice":   "pod=" + name + "-",
	} {
		for i := range 3 {
			if got := fromNode(t, "http://"+ip+"/personal", header); !strings.Contains(got, want) {
				t.Errorf("request %d with %q: %s, want %s", i, header, got, want)
			}
		}
	}
	if got := fromNode(t, "http://"+ip+"/nobody"); !strings.Contains(got, "pod="+name+"-") {
		t.Errorf("a request without the header: %s", got)
	}
	// HTTP/2 without TLS (prior knowledge) is routed the same way, and
	// stays HTTP/2 all the way to the laptop.
	ctx2, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for header, want := range map[string]string{"x-tunnel-dev: alice": "pod=laptop-alice", "x-tunnel-dev: nobody": "pod=" + name + "-"} {
		got, err := h.Run(ctx2, node, "curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-H", header, "http://"+ip+"/h2c")
		if err != nil || !strings.Contains(got, want) {
			t.Errorf("h2c request with %q: %v: %s, want %s", header, err, got, want)
		}
	}
	if !strings.Contains(aliceSrv.requests(), `path=/h2c proto=HTTP/2.0`) {
		t.Errorf("alice's server did not get the h2c request as HTTP/2:\n%s", aliceSrv.requests())
	}

	// The manager knows bob as dev, verified by the API server.
	for _, ic := range list(t, alice, ns)[name].Intercepts {
		switch ic.Name {
		case "bob":
			if ic.User != "dev" || ic.HeaderValue == bobValue {
				t.Errorf("alice sees bob's intercept as %+v: want user dev and the value withheld", ic)
			}
		case "alice":
			if ic.User != "admin" || ic.HeaderValue != "alice" {
				t.Errorf("alice's own intercept: %+v", ic)
			}
		}
	}
	if out, err := alice.run("leave", "bob", "-n", ns); err == nil || !strings.Contains(out, "belongs to dev") {
		t.Errorf("alice ending bob's intercept: %v\n%s", err, out)
	}
	// The namespace is called dev too: look for the holder's own words.
	if out, err := alice.run("intercept", name, "--port", "7080:http", "--name", "everything"); err == nil || !strings.Contains(out, "has an intercept by dev on") {
		t.Errorf("a global intercept over bob's: %v\n%s", err, out)
	}
	// A refusal after the sidecar took a new port takes it back: bob's
	// intercept of the TCP echo under alice's name adds port 9000 to the
	// sidecar and points the Service at it before the manager refuses the
	// name; then the sidecar and the Service are as they were.
	beforeRefusal := kindState(t, ns, "Deployment", name, name)
	if out, err := bob.run("intercept", name, "--port", "7090:tcp-echo", "--name", "alice"); err == nil || !strings.Contains(out, `an intercept named "alice" already exists`) {
		t.Errorf("bob's intercept under alice's name: %v\n%s", err, out)
	}
	if after := kindState(t, ns, "Deployment", name, name); after != beforeRefusal {
		t.Errorf("the refused intercept left the workload or its Service changed:\nbefore:\n%s\nafter:\n%s", beforeRefusal, after)
	}
	if got := fromNode(t, "http://"+ip+"/still-bob", "x-tunnel-dev: "+bobValue); !strings.Contains(got, "pod=laptop-bob") {
		t.Errorf("bob's intercept after alice's attempts: %s", got)
	}
	sparesNeedTheKey(t, bob, ns, name)
	if got := fromNode(t, "http://"+ip+"/alice-after-bobs-spares", "x-tunnel-dev: alice"); !strings.Contains(got, "pod=laptop-alice") {
		t.Errorf("alice's intercept after bob's spares: %s", got)
	}

	bob.must("leave", "bob")
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := fromNode(t, "http://"+ip+"/bob-left", "x-tunnel-dev: "+bobValue)
		if strings.Contains(got, "pod="+name+"-") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after bob leaves, his header still goes to %s", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := fromNode(t, "http://"+ip+"/alice-stays", "x-tunnel-dev: alice"); !strings.Contains(got, "pod=laptop-alice") {
		t.Errorf("alice's intercept after bob left: %s", got)
	}
}

// sparesNeedTheKey: l's user may port-forward to the workload's pod, and so
// reach its sidecar's direct port, but holds no intercept's key: the
// sidecar takes no spare from them, whatever intercept id they name.
func sparesNeedTheKey(t *testing.T, l *laptop, ns, workload string) {
	t.Helper()
	pods, err := h.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + workload})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("the workload's pods: %v", err)
	}
	const ids = 40
	out, err := l.sh(fmt.Sprintf(`kubectl port-forward -n %s pod/%s 28098:%d >/dev/null 2>&1 &
pf=$!
trap 'kill $pf' EXIT
for i in $(seq 1 50); do %[4]s spare 127.0.0.1:28098 1 1 %[2]s >/dev/null 2>&1 && break; sleep 0.1; done
%[4]s spare 127.0.0.1:28098 1 %[5]d %[2]s`, ns, pods.Items[0].Name, rpc.SidecarDirectPort, h.EchoClient(), ids))
	if err != nil {
		t.Fatalf("spares through %s's port-forward: %v\n%s", l.opt.User, err, out)
	}
	if n := strings.Count(out, fmt.Sprintf("status=%d", rpc.StatusForbidden)); n != ids {
		t.Errorf("%d of %d spares without the key were refused, want all:\n%s", n, ids, out)
	}
}
