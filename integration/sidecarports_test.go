//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/integration/lab"
)

// An app that serves on the port the sidecar's metrics take by default
// keeps it: the sidecar serves its own one below, becomes ready, and the
// intercept works; the app's metrics still answer on theirs.
func TestInterceptAnAppOnTheSidecarsMetricsPort(t *testing.T) {
	installManager(t)
	ctx := context.Background()
	ns := h.Namespace(t)
	labels := map[string]string{"app": "busy"}
	tmpl := lab.EchoTemplate(labels)
	c := &tmpl.Spec.Containers[0]
	c.Args = []string{"-metrics", fmt.Sprintf(":%d", inject.MetricsPort)}
	c.Ports = append(c.Ports, corev1.ContainerPort{Name: "app-metrics", ContainerPort: inject.MetricsPort})
	tmpl.Annotations["prometheus.io/port"] = strconv.Itoa(inject.MetricsPort)
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "busy", Namespace: ns},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tmpl}}
	if _, err := h.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Client.CoreV1().Services(ns).Create(ctx, lab.EchoService(ns, "busy", labels), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ip := serviceIP(t, ns, "busy")
	eventually(t, 2*time.Minute, "the app answers", func() (bool, string) {
		got := fromNode(t, "http://"+ip+"/up")
		return strings.Contains(got, "pod=busy-"), got
	})

	l := newLaptop(t, "busyport", "admin")
	l.must("connect", "-n", ns)
	startLocalServer(t, l, "laptop-busy", 7076)
	l.must("intercept", "busy", "--port", "7076:http")
	if got := fromNode(t, "http://"+ip+"/taken"); !strings.Contains(got, "pod=laptop-busy") {
		t.Fatalf("the intercepted app: %s", got)
	}
	pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=busy"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" || len(p.Spec.Containers) < 2 {
			continue
		}
		app := fromNode(t, fmt.Sprintf("http://%s:%d/metrics", p.Status.PodIP, inject.MetricsPort))
		side := fromNode(t, fmt.Sprintf("http://%s:%d/metrics", p.Status.PodIP, inject.MetricsPort-1))
		if strings.Contains(app, "tunnel_sidecar_") || !strings.Contains(side, "tunnel_sidecar_") {
			t.Errorf("pod %s: on %d the app's metrics should answer, on %d the sidecar's:\n%.300s\n---\n%.300s", p.Name, inject.MetricsPort, inject.MetricsPort-1, app, side)
		}
	}
}
