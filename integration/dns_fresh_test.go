//go:build e2e

package integration

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// nameWatch asks the laptop's resolver for one name every 20 ms, as an
// application in a loop would, and keeps each change of the answer (its
// status and addresses, sorted: "NOERROR 10.244.0.5 10.244.0.9",
// "NXDOMAIN") with the time the laptop saw it.
type nameWatch struct{ out *localServer }

func watchName(t *testing.T, l *laptop, name string) *nameWatch {
	t.Helper()
	script := fmt.Sprintf(`last=x
while true; do
  out=$(dig +tries=1 +time=1 %s A)
  a="$(echo "$out" | awk '/status:/ {s=$6; sub(/,/, "", s); print s}') $(echo "$out" | awk '$4 == "A" {print $5}' | LC_ALL=C sort | tr '\n' ' ')"
  if [ "$a" != "$last" ]; then echo "$(date +%%s%%3N) [$a]"; last=$a; fi
  sleep 0.02
done`, name)
	cmd, err := lab.Command(context.Background(), h.Lab.Paths, l.opt, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	w := &nameWatch{out: &localServer{cmd: cmd}}
	cmd.Stdout, cmd.Stderr = w.out, w.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.out.stop)
	return w
}

// seen waits for the answer want first seen after since,
// and says how long after since the laptop saw it.
func (w *nameWatch) seen(t *testing.T, want string, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(w.out.requests(), "\n") {
			ms, answer, ok := strings.Cut(line, " ")
			at, err := strconv.ParseInt(ms, 10, 64)
			if !ok || err != nil {
				continue
			}
			if when := time.UnixMilli(at); !when.Before(since) && strings.TrimSpace(strings.Trim(answer, "[]")) == want {
				return when.Sub(since)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the laptop did not see %q within %s; it saw:\n%s", want, within, w.out.requests())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNamesFollowServices: a name in use on the laptop keeps up with the
// cluster. A Service created is answered, one re-addressed (deleted and
// made again: a ClusterIP cannot change) answers with its new address, and
// one deleted is NXDOMAIN, each within a second of the API server's
// answer to the change (the target; the test fails past 3 s, which a
// loaded machine's noise does not reach), where a cache kept for the
// records' TTL (30 s in CoreDNS's default configuration) would have
// answered the old for up to that long.
func TestNamesFollowServices(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	l := newLaptop(t, "fresh", "admin")
	l.must("connect", "-n", ns)
	name := "fresh." + ns + ".svc." + h.Config.ClusterDomain
	w := watchName(t, l, name)
	w.seen(t, "NXDOMAIN", time.Time{}, 10*time.Second) // asked often already

	ctx := context.Background()
	svcs := h.Client.CoreV1().Services(ns)
	create := func() (string, time.Time) {
		t.Helper()
		s, err := svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "fresh"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.Spec.ClusterIP, time.Now()
	}
	remove := func() time.Time {
		t.Helper()
		if err := svcs.Delete(ctx, "fresh", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	const target, bound = time.Second, 3 * time.Second
	report := func(what string, took time.Duration) {
		t.Logf("NAMES %s: seen on the laptop after %s (target %s)", what, took.Round(10*time.Millisecond), target)
	}

	ip, at := create()
	report("a Service created", w.seen(t, "NOERROR "+ip, at, bound))
	// Asked for a while, so that the answer is a cached one being kept
	// fresh, not a first lookup.
	time.Sleep(3 * time.Second)
	remove()
	ip2, at := create()
	if ip2 == ip {
		t.Fatalf("the Service came back with its old address %s", ip)
	}
	report("a Service re-addressed", w.seen(t, "NOERROR "+ip2, at, bound))
	time.Sleep(3 * time.Second)
	report("a Service deleted", w.seen(t, "NXDOMAIN", remove(), bound))
}

// TestHeadlessNamesFollowPods: a headless Service's name answers its
// ready pods' addresses, and on the laptop it follows them as the
// EndpointSlice does: a pod that becomes ready is in the answer, and one
// that goes is out of it, within a second of the EndpointSlice saying so
// (the target; the test fails past 3 s).
func TestHeadlessNamesFollowPods(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx := context.Background()
	if _, err := h.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "pods"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l := newLaptop(t, "headlessdns", "admin")
	l.must("connect", "-n", ns)
	w := watchName(t, l, "pods."+ns+".svc."+h.Config.ClusterDomain)

	// ready waits until the EndpointSlices of the Service list n ready
	// addresses, and says which and when it saw them.
	ready := func(n int) (string, time.Time) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			slices, err := h.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=pods"})
			if err != nil {
				t.Fatal(err)
			}
			var ips []string
			for _, sl := range slices.Items {
				for _, ep := range sl.Endpoints {
					if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
						ips = append(ips, ep.Addresses...)
					}
				}
			}
			if len(ips) == n {
				sort.Strings(ips)
				return "NOERROR " + strings.Join(ips, " "), time.Now()
			}
			if time.Now().After(deadline) {
				t.Fatalf("the EndpointSlices list %d ready addresses, not %d", len(ips), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	scale := func(n int32) {
		t.Helper()
		if _, err := h.Client.AppsV1().Deployments(ns).UpdateScale(ctx, "echo", &autoscalingv1.Scale{
			ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: n},
		}, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	const target, bound = time.Second, 3 * time.Second
	one, _ := ready(1)
	w.seen(t, one, time.Time{}, 10*time.Second)
	scale(2)
	two, at := ready(2)
	t.Logf("NAMES a pod ready: seen on the laptop %s after its EndpointSlice (target %s)", w.seen(t, two, at, bound).Round(10*time.Millisecond), target)
	scale(1)
	one, at = ready(1)
	t.Logf("NAMES a pod gone: seen on the laptop %s after its EndpointSlice (target %s)", w.seen(t, one, at, bound).Round(10*time.Millisecond), target)
}
