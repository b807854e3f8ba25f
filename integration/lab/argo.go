//go:build linux

package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"
)

// The lab's Argo Rollouts: the controller built from the Go module proxy
// (as Traefik is) and installed from the module's own install.yaml, so a
// Rollout in the lab makes ReplicaSets and pods as it does on a user's
// cluster. v1.10.2 wants a newer Go than the lab's.
const (
	ArgoRolloutsVersion   = "v1.10.1"
	ArgoRolloutsImage     = labRegistry + "/lab/argo-rollouts:" + ArgoRolloutsVersion
	ArgoRolloutsNamespace = "argo-rollouts"
)

// EnsureArgoRollouts brings up Argo Rollouts on first use (building the
// controller takes about 5 minutes cold; the binary is cached by version)
// and waits until its controller is available. It is idempotent.
func EnsureArgoRollouts(ctx context.Context, l *Lab, cs kubernetes.Interface) error {
	p := l.Paths
	src, err := moduleDir(ctx, "github.com/argoproj/argo-rollouts@"+ArgoRolloutsVersion)
	if err != nil {
		return err
	}
	bin, err := ensureArgoController(ctx, p, src)
	if err != nil {
		return err
	}
	if !inRegistry(ctx, p, ArgoRolloutsImage) {
		// The image runs as the user Argo's own image has.
		if _, err := PushImage(ctx, p, ImageSpec{Ref: ArgoRolloutsImage, Binary: bin, Path: "/bin/rollouts-controller"}); err != nil {
			return err
		}
	}
	manifest, err := os.ReadFile(filepath.Join(src, "manifests", "install.yaml"))
	if err != nil {
		return err
	}
	manifest = bytes.ReplaceAll(manifest, []byte("quay.io/argoproj/argo-rollouts:latest"), []byte(ArgoRolloutsImage))
	// Argo's image names its user; ours has none, so the pod does.
	nonRoot := []byte("        runAsNonRoot: true\n      serviceAccountName: argo-rollouts")
	if !bytes.Contains(manifest, nonRoot) {
		return fmt.Errorf("argo-rollouts %s: install.yaml's pod security context changed", ArgoRolloutsVersion)
	}
	manifest = bytes.ReplaceAll(manifest, nonRoot, []byte("        runAsNonRoot: true\n        runAsUser: 999\n      serviceAccountName: argo-rollouts"))
	ns := []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + ArgoRolloutsNamespace + "\n")
	if err := kubectl(ctx, p, ns, "apply", "--server-side", "--field-manager=tunnel-lab", "-f", "-"); err != nil {
		return fmt.Errorf("create namespace %s: %w", ArgoRolloutsNamespace, err)
	}
	if err := kubectl(ctx, p, manifest, "apply", "--server-side", "--force-conflicts", "--field-manager=tunnel-lab",
		"-n", ArgoRolloutsNamespace, "-f", "-"); err != nil {
		return fmt.Errorf("install argo-rollouts: %w", err)
	}
	if err := kubectl(ctx, p, nil, "wait", "--for=condition=Established", "--timeout=60s", "crd/rollouts.argoproj.io"); err != nil {
		return err
	}
	return WaitDeployment(ctx, cs, ArgoRolloutsNamespace, "argo-rollouts", 2*time.Minute)
}

// ensureArgoController builds the controller once into the cache, inside
// the downloaded module's folder with its own go.mod (it has replace
// directives, which `go install` refuses).
func ensureArgoController(ctx context.Context, p Paths, src string) (string, error) {
	dir := filepath.Join(p.Cache, "argo-rollouts-"+ArgoRolloutsVersion)
	bin := filepath.Join(dir, "rollouts-controller")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := bin + ".building"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", tmp, "./cmd/rollouts-controller")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build argo-rollouts %s: %w\n%s", ArgoRolloutsVersion, err, tail(string(out), 30))
	}
	return bin, os.Rename(tmp, bin)
}
