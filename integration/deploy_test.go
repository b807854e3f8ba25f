//go:build e2e

package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

// The test app as a folder of templates, the way a team keeps its manifests.
var webTemplates = map[string]string{
	"values.yaml": "name: web\nreplicas: 1\nimage: 10.209.0.1:5000/lab/echo:latest\ngreeting: hello\n",
	"deployment.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .name }}}
spec:
  replicas: {{ .replicas }}
  selector: {matchLabels: {app: {{ .name }}}}
  template:
    metadata: {labels: {app: {{ .name }}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {{ .image }}
        command: [/echo]
        env: [{name: GREETING, value: "{{ .greeting }}"}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
`,
	"statefulset.yaml": `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: {{ .name }}-db}
spec:
  serviceName: {{ .name }}
  replicas: 1
  selector: {matchLabels: {app: {{ .name }}-db}}
  template:
    metadata: {labels: {app: {{ .name }}-db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: db, image: "{{ .image }}", command: [/echo]}
`,
	"service.yaml": `apiVersion: v1
kind: Service
metadata: {name: {{ .name }}}
spec:
  selector: {app: {{ .name }}}
  ports: [{name: http, port: 80, targetPort: http}]
`,
}

func TestDeployRendersAppliesAndWaits(t *testing.T) {
	ns := h.Namespace(t)
	dir := t.TempDir()
	for name, content := range webTemplates {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deploy := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		return h.Run(ctx, node, append([]string{h.Tunnel(t), "deploy", dir, "-n", ns}, args...)...)
	}
	ctx := context.Background()

	out, err := deploy("--set", "replicas=2", "--set", "greeting=hi")
	if err != nil || !strings.Contains(out, ns+"/deployment/web created") || !strings.Contains(out, "Waiting for deployment") {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	sts, err := h.Client.AppsV1().StatefulSets(ns).Get(ctx, "web-db", metav1.GetOptions{})
	if err != nil || sts.Status.ReadyReplicas != 1 {
		t.Errorf("deploy returned before the StatefulSet rolled out: %v %+v", err, sts.Status)
	}
	d, err := h.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 2 || d.Status.ReadyReplicas != 2 || d.Spec.Template.Spec.Containers[0].Env[0].Value != "hi" {
		t.Errorf("after deploy: %d replicas (%d ready), GREETING=%q", *d.Spec.Replicas, d.Status.ReadyReplicas, d.Spec.Template.Spec.Containers[0].Env[0].Value)
	}
	if got := fromNode(t, "http://"+serviceIP(t, ns, "web")+"/deployed"); !strings.Contains(got, "pod=web-") {
		t.Errorf("the deployed Service: %s", got)
	}

	// --dry-run says what would change and changes nothing.
	out, err = deploy("--set", "replicas=3", "--set", "greeting=hi", "--dry-run")
	if err != nil || !strings.Contains(out, "deployment/web would be configured") || !strings.Contains(out, "spec.replicas: 2 → 3") ||
		!strings.Contains(out, "service/web would be unchanged") {
		t.Errorf("--dry-run: %v\n%s", err, out)
	}
	// A misspelt parameter is one sentence, before anything is applied.
	out, err = deploy("--set", "replica=3")
	if err == nil || !strings.Contains(out, `unknown parameter "replica"`) {
		t.Errorf("an unknown parameter: %v\n%s", err, out)
	}
	after, err := h.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil || after.Generation != d.Generation || *after.Spec.Replicas != 2 {
		t.Errorf("a dry run or refused deploy changed the Deployment: %v (generation %d → %d, %d replicas)",
			err, d.Generation, after.Generation, *after.Spec.Replicas)
	}

	// A value that would add structure to the manifests is refused (the
	// template writes replicas bare; greeting is quoted, and stays a string).
	out, err = deploy("--set", "replicas=2\n  paused: true", "--set", "greeting=hi")
	if err == nil || !strings.Contains(out, "would change the manifests' structure") {
		t.Errorf("a value with a newline: %v\n%s", err, out)
	}
	// A field someone else set with kubectl is theirs: a deploy stops and
	// names the conflict, unless --force-conflicts.
	if out, err := kubectl(ctx, node, "scale", "-n", ns, "deployment/web", "--replicas=3"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	out, err = deploy("--set", "replicas=2", "--set", "greeting=hi")
	if err == nil || !strings.Contains(out, "conflict") || !strings.Contains(out, "--force-conflicts") {
		t.Errorf("a deploy over kubectl's replicas: %v\n%s", err, out)
	}
	if out, err := deploy("--set", "replicas=2", "--set", "greeting=hi", "--force-conflicts"); err != nil {
		t.Errorf("the same deploy with --force-conflicts: %v\n%s", err, out)
	}

	// An image that cannot be had: the deploy fails with the pod's reason.
	out, err = deploy("--set", "image="+lab.RegistryHost()+"/lab/nosuch:v1", "--timeout", "60s")
	if err == nil || !pullFailed(out) {
		t.Errorf("a deploy whose pods cannot start: %v\n%s", err, out)
	}
}
