//go:build linux

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// The lab's gateway: Traefik (a real Gateway API implementation with
// per-backend Prometheus metrics), built from the module proxy, and the
// Gateway API CRDs of the version Traefik's go.mod pins.
const (
	TraefikVersion    = "v3.6.12"
	TraefikImage      = labRegistry + "/lab/traefik:" + TraefikVersion
	GatewayAPIVersion = "v1.4.0"
	// GatewayNamespace and GatewayName name the Gateway routes attach to.
	GatewayNamespace = "lab-gateway"
	GatewayName      = "lab"
)

// EnsureGateway brings up the lab's gateway on first use (building Traefik
// takes about 10 minutes cold; the binary is cached by version) and waits
// until its Gateway is programmed. It is idempotent.
func EnsureGateway(ctx context.Context, l *Lab, cs kubernetes.Interface) error {
	p := l.Paths
	bin, err := ensureTraefik(ctx, p)
	if err != nil {
		return err
	}
	if !inRegistry(ctx, p, TraefikImage) {
		if _, err := PushImage(ctx, p, ImageSpec{Ref: TraefikImage, Binary: bin, Path: "/traefik"}); err != nil {
			return err
		}
	}
	crds, err := moduleDir(ctx, "sigs.k8s.io/gateway-api@"+GatewayAPIVersion)
	if err != nil {
		return err
	}
	if err := kubectl(ctx, p, nil, "apply", "--server-side", "--force-conflicts", "--field-manager=tunnel-lab",
		"-f", filepath.Join(crds, "config/crd/standard")); err != nil {
		return fmt.Errorf("install the Gateway API CRDs: %w", err)
	}
	if err := kubectl(ctx, p, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/gateways.gateway.networking.k8s.io", "crd/httproutes.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io"); err != nil {
		return err
	}
	manifest, err := configFiles.ReadFile("config/gateway.yaml")
	if err != nil {
		return err
	}
	manifest = bytes.ReplaceAll(manifest, []byte("TRAEFIK_IMAGE"), []byte(TraefikImage))
	if err := kubectl(ctx, p, manifest, "apply", "--server-side", "--force-conflicts", "--field-manager=tunnel-lab", "-f", "-"); err != nil {
		return fmt.Errorf("install the gateway: %w", err)
	}
	if err := WaitDeployment(ctx, cs, GatewayNamespace, "traefik", 2*time.Minute); err != nil {
		return err
	}
	if err := scrapeGateway(ctx, p); err != nil {
		return err
	}
	return poll(ctx, time.Minute, "gateway "+GatewayName+" is programmed", func(ctx context.Context) (bool, error) {
		cmd := exec.CommandContext(ctx, p.kube("kubectl"), "--kubeconfig", p.AdminKubeconfig(), "get", "gateway", "-n", GatewayNamespace, GatewayName,
			"-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status}`)
		out, err := cmd.CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "True", fmt.Errorf("%v: %s", err, out)
	})
}

// scrapeGateway waits until the lab's Prometheus scrapes the gateway: its
// pod's port named metrics, which podtargets finds as a PodMonitor would.
// A target file an older lab wrote for the gateway's Service goes, or
// every series of the gateway would be scraped twice.
func scrapeGateway(ctx context.Context, p Paths) error {
	if err := os.Remove(filepath.Join(p.PrometheusTargets(), "gateway.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	q := PrometheusURL() + "/api/v1/query?query=" + url.QueryEscape(`sum(up{namespace="`+GatewayNamespace+`"}) == count(up{namespace="`+GatewayNamespace+`"})`)
	return poll(ctx, time.Minute, "Prometheus scrapes the gateway", func(ctx context.Context) (bool, error) {
		out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+nodeNetns, "--", "curl", "-sS", "--max-time", "2", q).CombinedOutput()
		return err == nil && strings.Contains(string(out), `"value"`), fmt.Errorf("%v: %s", err, out)
	})
}

// ensureTraefik builds Traefik once into the cache. `go install` refuses
// its module (replace directives), so it is built inside the downloaded
// module's folder, with that module's own go.mod.
func ensureTraefik(ctx context.Context, p Paths) (string, error) {
	dir := filepath.Join(p.Cache, "traefik-"+TraefikVersion)
	bin := filepath.Join(dir, "traefik")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	src, err := moduleDir(ctx, "github.com/traefik/traefik/v3@"+TraefikVersion)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := bin + ".building"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", tmp, "./cmd/traefik")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build traefik %s: %w\n%s", TraefikVersion, err, tail(string(out), 30))
	}
	return bin, os.Rename(tmp, bin)
}

// kubectl runs the lab's kubectl as admin, with stdin when given.
func kubectl(ctx context.Context, p Paths, stdin []byte, args ...string) error {
	cmd := exec.CommandContext(ctx, p.kube("kubectl"), append([]string{"--kubeconfig", p.AdminKubeconfig()}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}
