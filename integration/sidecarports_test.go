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
	if err := lab.WaitDeployment(ctx, h.Client, ns, "busy", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	ip := serviceIP(t, ns, "busy")
	// From the node, as a client in the cluster; a refusal is an answer.
	get := func(url string) string {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, _ := h.Run(cctx, node, "curl", "-sS", "--max-time", "5", url)
		return out
	}
	eventually(t, time.Minute, "the app answers", func() (bool, string) {
		got := get("http://" + ip + "/up")
		return strings.Contains(got, "pod=busy-"), got
	})

	l := newLaptop(t, "busyport", "admin")
	l.must("connect", "-n", ns)
	startLocalServer(t, l, "laptop-busy", 7076)
	l.must("intercept", "busy", "--port", "7076:http")
	if got := fromNode(t, "http://"+ip+"/taken"); !strings.Contains(got, "pod=laptop-busy") {
		t.Fatalf("the intercepted app: %s", got)
	}
	// The sidecar's own metrics port is read from its container, and its
	// direct path to the laptop (18098, on the pod's loopback) must work
	// too: a metrics port on it would leave only the manager's path.
	eventually(t, 30*time.Second, "the sidecar serves its metrics beside the app's, and reaches the laptop directly", func() (bool, string) {
		for i := range 5 {
			get(fmt.Sprintf("http://%s/direct-%d", ip, i))
		}
		pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=busy"})
		if err != nil {
			return false, err.Error()
		}
		checked := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
				continue
			}
			var side int32
			for _, c := range p.Spec.Containers {
				for _, cp := range c.Ports {
					if c.Name == inject.Container && cp.Name == "tunnel-metrics" {
						side = cp.ContainerPort
					}
				}
			}
			if side == 0 {
				return false, "pod " + p.Name + " has no sidecar yet"
			}
			app := get(fmt.Sprintf("http://%s:%d/metrics", p.Status.PodIP, inject.MetricsPort))
			mine := get(fmt.Sprintf("http://%s:%d/metrics", p.Status.PodIP, side))
			if side == inject.MetricsPort || strings.Contains(app, "tunnel_sidecar_") ||
				!strings.Contains(mine, `tunnel_sidecar_laptop_connections_total{intercept="busy-http",path="direct"}`) {
				return false, fmt.Sprintf("pod %s: on %d the app's metrics, on %d the sidecar's, with direct connections:\n%.300s\n---\n%s", p.Name, inject.MetricsPort, side, app, mine)
			}
			checked++
		}
		return checked == 1, fmt.Sprintf("%d pods checked", checked)
	})
}
