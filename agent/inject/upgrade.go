package inject

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"tunnel.dev/tunnel/workload"
)

// SidecarImage is the image of a pod template's sidecar, "" when it has none.
func SidecarImage(t *corev1.PodTemplateSpec) string {
	for _, c := range t.Spec.Containers {
		if c.Name == Container {
			return c.Image
		}
	}
	return ""
}

// Upgrade gives w's sidecar agent's image, with the captures it has, and
// waits for the rollout; a sidecar of that image already is left alone.
// On failure the sidecar goes back to the image it had.
func Upgrade(ctx context.Context, wc workload.Client, w *workload.Workload, agent Agent, timeout time.Duration, progress Progress) error {
	old := SidecarImage(&w.Template)
	if old == "" || old == agent.Image {
		return nil
	}
	progress(fmt.Sprintf("Moving the sidecar of %s to %s (one rollout)", w.Describe(), agent.Image))
	caps, redirects := Captures(&w.Template), Redirects(&w.Template)
	if err := applySidecar(ctx, wc, w, agent, caps, redirects); err != nil {
		return err
	}
	if err := wc.Wait(ctx, w.Namespace, w.Ref, timeout, progress); err != nil {
		undo := context.WithoutCancel(ctx)
		_ = applySidecar(undo, wc, w, Agent{Image: old, PullSecrets: agent.PullSecrets}, caps, redirects)
		wc.Unstick(undo, w.Namespace, w.Ref)
		return fmt.Errorf("move the sidecar of %s to %s: %w", w.Describe(), agent.Image, err)
	}
	return nil
}
