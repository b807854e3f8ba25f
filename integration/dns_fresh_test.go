//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// nameWatch asks the laptop's resolver for one name every 20 ms, as an
// application in a loop would, and keeps each change of the answer (its
// status and addresses: "NOERROR 10.96.0.9", "NXDOMAIN") with the time
// the laptop saw it.
type nameWatch struct{ out *localServer }

func watchName(t *testing.T, l *laptop, name string) *nameWatch {
	t.Helper()
	script := fmt.Sprintf(`last=x
while true; do
  a=$(dig +tries=1 +time=1 %s A | awk '/status:/ {s=$6; sub(/,/, "", s)} $4 == "A" {a=a " " $5} END {print s a}')
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
