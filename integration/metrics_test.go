//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// managerMetrics reads the manager pod's metrics from the node.
func managerMetrics(ctx context.Context) (string, error) {
	pods, err := h.Client.CoreV1().Pods("tunnel-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=tunnel-manager"})
	if err != nil || len(pods.Items) == 0 {
		return "", fmt.Errorf("the manager's pod: %v", err)
	}
	return h.Run(ctx, node, "curl", "-sf", "--max-time", "5", "http://"+pods.Items[0].Status.PodIP+":9090/metrics")
}

// metricValue is the value of a series in Prometheus' text format: a
// name, with its labels as the exposition writes them.
func metricValue(text, name string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}
