//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

// The lab's gateway (Traefik, Gateway API) routes an HTTPRoute to the test
// app and counts its requests per backend Service in Prometheus metrics:
// what tunnel canary steers and watches.
func TestGatewayRoutesToTheApp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute) // a cold Traefik build
	defer cancel()
	if err := lab.EnsureGateway(ctx, h.Lab, h.Client); err != nil {
		t.Fatal(err)
	}
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	route := fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: %s}
spec:
  parentRefs: [{name: %s, namespace: %s}]
  hostnames: [echo.lab.test]
  rules:
  - backendRefs: [{name: echo, port: 80}]
`, ns, lab.GatewayName, lab.GatewayNamespace)
	file := filepath.Join(t.TempDir(), "route.yaml")
	if err := os.WriteFile(file, []byte(route), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(ctx, node, "apply", "-f", file); err != nil {
		t.Fatalf("apply the HTTPRoute: %v\n%s", err, out)
	}
	gw := serviceIP(t, lab.GatewayNamespace, "traefik")
	eventually(t, 30*time.Second, "the gateway routes to the app", func() (bool, string) {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		out, err := h.Run(rctx, node, "curl", "-sS", "--max-time", "2", "-H", "Host: echo.lab.test", "http://"+gw+"/through-the-gateway")
		return err == nil && strings.Contains(out, "pod=echo-"), out
	})
	metrics := fromNode(t, "http://"+gw+":9100/metrics")
	for _, want := range []string{`traefik_service_requests_total{code="200"`, `traefik_service_request_duration_seconds_bucket{`, `le="0.005"`, ns} {
		if !strings.Contains(metrics, want) {
			t.Errorf("the gateway's metrics lack %s", want)
		}
	}
}
