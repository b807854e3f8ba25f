//go:build e2e

package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// publicNameSpaces makes namespaces named like top-level domains (com,
// dev), each with a Service whose <svc>.<ns> name is also a name outside
// the cluster (github.com, go.dev: the lab's upstream resolver answers
// those with the node's address), and one named like a company's private
// domain (corp) with a Service wiki, where the upstream knows jira.corp.
// It returns the Services' cluster addresses.
func publicNameSpaces(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	ips := map[string]string{}
	for ns, svc := range map[string]string{"com": "github", "dev": "go", "corp": "wiki"} {
		_, err := h.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		switch {
		case err == nil && ns != "dev":
			t.Cleanup(func() { _ = h.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
		case err != nil && !apierrors.IsAlreadyExists(err):
			t.Fatal(err)
		}
		s, err := h.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: svc},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			s, err = h.Client.CoreV1().Services(ns).Get(ctx, svc, metav1.GetOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Client.CoreV1().Services(ns).Delete(context.Background(), svc, metav1.DeleteOptions{}) })
		ips[svc+"."+ns] = s.Spec.ClusterIP
	}
	return ips
}

// upstreamAnswer is the node's address, which the lab's upstream resolver
// gives for every name it knows.
const upstreamAnswer = "10.209.0.1"

// checkPublicNames asks the laptop's resolver for the public names and
// the cluster's full names of the same Services.
func checkPublicNames(t *testing.T, l *laptop, ips map[string]string) {
	t.Helper()
	for name, ip := range ips {
		full := name + ".svc." + h.Config.ClusterDomain
		if name == "wiki.corp" {
			// corp is no public suffix: <svc>.corp is the cluster's, as
			// ever; a name the cluster lacks there is still the world's.
			if out, err := l.sh("dig +short wiki.corp"); err != nil || strings.TrimSpace(out) != ip {
				t.Errorf("wiki.corp: %v %q, want the cluster's %s", err, out, ip)
			}
			if out, err := l.sh("dig +short jira.corp"); err != nil || strings.TrimSpace(out) != upstreamAnswer {
				t.Errorf("jira.corp: %v %q, want the upstream resolver's %s", err, out, upstreamAnswer)
			}
			continue
		}
		// The Services are there, by their full names.
		out, err := l.sh("dig +short " + full)
		if err != nil || strings.TrimSpace(out) != ip {
			t.Errorf("%s: %v %q, want the Service's %s", full, err, out, ip)
		}
		// Their short names outside the cluster are the world's.
		out, err = l.sh("dig +short " + name)
		if err != nil || strings.TrimSpace(out) != upstreamAnswer {
			t.Errorf("%s: %v %q, want the upstream resolver's answer %s, not the cluster's %s", name, err, out, upstreamAnswer, ip)
		}
	}
}

// A namespace named like a top-level domain never takes the world's names
// under it, in either DNS mode; one named like a private domain keeps the
// names the cluster lacks answered upstream.
func TestNamespacesNamedLikeDomainsTakeNoPublicNames(t *testing.T) {
	installManager(t)
	ips := publicNameSpaces(t)

	plain := newLaptop(t, "psl", "admin")
	plain.must("connect")
	checkPublicNames(t, plain, ips)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := lab.StartResolved(ctx, h.Lab.Paths, "pslres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })
	split := newLaptop(t, "pslres", "admin")
	split.opt.Env = []string{"DBUS_SYSTEM_BUS_ADDRESS=" + r.Bus}
	split.must("connect")
	link, err := r.Resolvectl(ctx, "domain", "tunnel0")
	if err != nil || strings.Contains(link, "~com ") || strings.Contains(link, "~dev ") || !strings.Contains(link, "~corp") {
		t.Errorf("resolved's routing domains on tunnel0: %v, want corp and neither com nor dev\n%s", err, link)
	}
	checkPublicNames(t, split, ips)
}
