package main

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Each pod's metrics port is a target once: the annotated one with its
// path, ports named metrics or ...-metrics at /metrics; pods not running
// are none.
func TestTargets(t *testing.T) {
	pod := func(name string, ann map[string]string, phase corev1.PodPhase, ports ...corev1.ContainerPort) any {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Annotations: ann},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status:     corev1.PodStatus{Phase: phase, PodIP: "10.0.0.1"},
		}
	}
	scrape := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9102", "prometheus.io/path": "/m"}
	got := targets([]any{
		pod("app", scrape, corev1.PodRunning, corev1.ContainerPort{Name: "http", ContainerPort: 8080}, corev1.ContainerPort{Name: "app-metrics", ContainerPort: 9102}),
		pod("gateway", nil, corev1.PodRunning, corev1.ContainerPort{Name: "web", ContainerPort: 8000}, corev1.ContainerPort{Name: "metrics", ContainerPort: 9100}),
		pod("both", scrape, corev1.PodRunning, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090}),
		pod("pending", scrape, corev1.PodPending),
		pod("plain", nil, corev1.PodRunning, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
	})
	data, _ := json.Marshal(got)
	want := `[{"targets":["10.0.0.1:9102"],"labels":{"__metrics_path__":"/m","namespace":"ns","pod":"app"}},` +
		`{"targets":["10.0.0.1:9090"],"labels":{"namespace":"ns","pod":"both"}},` +
		`{"targets":["10.0.0.1:9102"],"labels":{"__metrics_path__":"/m","namespace":"ns","pod":"both"}},` +
		`{"targets":["10.0.0.1:9100"],"labels":{"namespace":"ns","pod":"gateway"}}]`
	if string(data) != want {
		t.Errorf("targets:\n%s\nwant\n%s", data, want)
	}
}
