//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// greeter is a team's service as its repository holds it: a Go module
// with a main package, and beside it the manifests, whose values.yaml
// says which parameter the package's image fills.
func greeter(t *testing.T, greeting string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.com/greeter\n\ngo 1.22\n",
		"cmd/greeter/main.go": `package main

import (
	"fmt"
	"net/http"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "` + greeting + `") })
	http.ListenAndServe(":8080", nil)
}
`,
		"deploy/values.yaml": "build: {image: ../cmd/greeter}\n",
		"deploy/app.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter}
spec:
  replicas: 1
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {{ .image }}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports: [{name: http, port: 80, targetPort: http}]
`,
	}
	for p, content := range files {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, dir, "init", "-q")
	commit(t, dir, "the greeter")
	return dir
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.email=e2e@lab.test", "-c", "user.name=e2e"}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func commit(t *testing.T, dir, msg string) {
	t.Helper()
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", msg)
}

// builderLaptop is a developer's laptop that may push to the lab's
// registry, with the go env Go ships: this machine's own (GOFLAGS
// -buildvcs=false) would hide a build that stamps the commit.
func builderLaptop(t *testing.T) *laptop {
	t.Helper()
	l := newLaptop(t, "builder", "admin")
	goenv := filepath.Join(t.TempDir(), "go.env")
	if err := os.WriteFile(goenv, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l.opt.Env = []string{"DOCKER_CONFIG=" + h.Paths.RegistryDockerConfig(), "SSL_CERT_FILE=" + h.Paths.RegistryCABundle(), "GOENV=" + goenv, "GOFLAGS="}
	return l
}

// TestDeployBuildsFromSource: `deploy --build` as a developer runs it on a
// laptop with the registry's credentials and no Docker: the Go package is
// built for the nodes' platform, pushed to the registry, and the
// Deployment runs it by digest, pulled by the kubelet and answering. The
// same source again, even after a commit elsewhere in the repository,
// pushes nothing and changes nothing in the cluster; changed source rolls
// out a new digest.
func TestDeployBuildsFromSource(t *testing.T) {
	ns := h.Namespace(t)
	src := greeter(t, "hello from source")
	l := builderLaptop(t)
	registry := lab.RegistryHost() + "/e2e-" + ns
	type result struct {
		Param, Image, Tag  string
		Pushed, InRegistry bool
	}
	deploy := func(dir string) result {
		t.Helper()
		raw := l.must("deploy", filepath.Join(dir, "deploy"), "--build", "--registry", registry, "-n", ns, "-o", "json")
		var out struct {
			Builds []result `json:"builds"`
		}
		if err := json.Unmarshal([]byte(raw), &out); err != nil || len(out.Builds) != 1 {
			t.Fatalf("deploy --build -o json: %v\n%s", err, raw)
		}
		return out.Builds[0]
	}
	ctx := context.Background()
	deps := h.Client.AppsV1().Deployments(ns)

	first := deploy(src)
	want := registry + "/greeter@sha256:"
	if first.Param != "image" || !strings.HasPrefix(first.Image, want) || !first.Pushed || !strings.HasPrefix(first.Tag, registry+"/greeter:") {
		t.Fatalf("first build: %+v, want image = %s... pushed", first, want)
	}
	d, err := deps.Get(ctx, "greeter", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Spec.Containers[0].Image; got != first.Image {
		t.Fatalf("the Deployment runs %s, want %s", got, first.Image)
	}
	answer := func() string {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := h.Run(cctx, node, "sh", "-c", "curl -sS --max-time 5 http://$(kubectl get svc -n "+ns+" greeter -o jsonpath='{.spec.clusterIP}')/")
		if err != nil {
			t.Fatalf("curl the greeter: %v\n%s", err, out)
		}
		return strings.TrimSpace(out)
	}
	if got := answer(); got != "hello from source" {
		t.Fatalf("the greeter answers %q", got)
	}

	// The same source, after a commit that changes no code: the same
	// digest, nothing pushed, nothing changed.
	if err := os.WriteFile(filepath.Join(src, "README.md"), []byte("the greeter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	commit(t, src, "a README")
	again := deploy(src)
	if again.Image != first.Image || again.Pushed || !again.InRegistry {
		t.Errorf("the same source again: %+v, want %s and nothing pushed", again, first.Image)
	}
	d2, err := deps.Get(ctx, "greeter", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d2.ResourceVersion != d.ResourceVersion || d2.Generation != d.Generation {
		t.Errorf("the same source changed the Deployment: resourceVersion %s → %s, generation %d → %d",
			d.ResourceVersion, d2.ResourceVersion, d.Generation, d2.Generation)
	}

	// Changed source: a new digest, rolled out.
	changed := greeter(t, "hello from a change")
	next := deploy(changed)
	if next.Image == first.Image || !next.Pushed {
		t.Errorf("changed source: %+v, want a new digest pushed", next)
	}
	if got := answer(); got != "hello from a change" {
		t.Errorf("after the change the greeter answers %q", got)
	}
}

// TestCanaryBuildsItsImageFromSource: the release loop from source. The
// greeter, deployed with deploy --build behind a route of the lab's
// gateway, gets a change shipped with canary start --build, judged on the
// gateway's metrics and promoted; the old source deployed after it takes
// the image back from the promotion.
func TestCanaryBuildsItsImageFromSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := lab.EnsureGateway(ctx, h.Lab, h.Client); err != nil {
		t.Fatal(err)
	}
	ns := h.Namespace(t)
	host := "greeter." + ns + ".lab.test"
	withRoute := func(greeting string) string {
		src := greeter(t, greeting)
		route := fmt.Sprintf("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: greeter}\n"+
			"spec:\n  parentRefs: [{name: %s, namespace: %s}]\n  hostnames: [%s]\n  rules:\n  - backendRefs: [{name: greeter, port: 80}]\n",
			lab.GatewayName, lab.GatewayNamespace, host)
		if err := os.WriteFile(filepath.Join(src, "deploy", "route.yaml"), []byte(route), 0o644); err != nil {
			t.Fatal(err)
		}
		commit(t, src, "the route")
		return filepath.Join(src, "deploy")
	}
	v1, v2 := withRoute("hello v1"), withRoute("hello v2")
	l := builderLaptop(t)
	registry := lab.RegistryHost() + "/e2e-" + ns
	l.must("deploy", v1, "--build", "--registry", registry, "-n", ns)
	c := &canaryLab{t: t, ns: ns, host: host, gw: serviceIP(t, lab.GatewayNamespace, "traefik"), laptop: l}
	answer := func() string {
		out, _ := h.Run(ctx, node, "curl", "-sS", "--max-time", "2", "-H", "Host: "+host, "http://"+c.gw+"/")
		return strings.TrimSpace(out)
	}
	eventually(t, 30*time.Second, "the gateway routes to the greeter", func() (bool, string) {
		got := answer()
		return got == "hello v1", got
	})
	first := deploymentImage(t, ns, "greeter")
	c.startLoad(40)

	out := l.must("canary", "start", "greeter", "-n", ns, "--build", v2, "--registry", registry, "--driver", "laptop",
		"--steps", "50,100", "--interval", "8s", "--min-requests", "10", "--prometheus", lab.PrometheusURL())
	if !strings.Contains(out, "The canary of greeter is promoted") {
		t.Fatalf("canary start --build:\n%s", out)
	}
	promoted := deploymentImage(t, ns, "greeter")
	if promoted == first || !strings.HasPrefix(promoted, registry+"/greeter@sha256:") {
		t.Errorf("after the promotion the greeter runs %s (before: %s), want the canary's build by digest", promoted, first)
	}
	if got := answer(); got != "hello v2" {
		t.Errorf("after the promotion the gateway answers %q", got)
	}

	l.must("deploy", v1, "--build", "--registry", registry, "-n", ns)
	if got := deploymentImage(t, ns, "greeter"); got != first {
		t.Errorf("the old source deployed after the promotion: %s, want %s back", got, first)
	}
}

func deploymentImage(t *testing.T, ns, name string) string {
	t.Helper()
	d, err := h.Client.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec.Containers[0].Image
}
