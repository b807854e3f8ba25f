package inject

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rollout"
)

// SidecarImage is the image of d's sidecar, "" when it has none.
func SidecarImage(d *appsv1.Deployment) string {
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == Container {
			return c.Image
		}
	}
	return ""
}

// Upgrade gives d's sidecar agent's image, with the captures it has, and
// waits for the rollout; a sidecar of that image already is left alone.
// On failure the sidecar goes back to the image it had.
func Upgrade(ctx context.Context, cs kubernetes.Interface, d *appsv1.Deployment, agent Agent, timeout time.Duration, progress Progress) error {
	old := SidecarImage(d)
	if old == "" || old == agent.Image {
		return nil
	}
	progress(fmt.Sprintf("Moving the sidecar of deployment %s/%s to %s (one rollout)", d.Namespace, d.Name, agent.Image))
	caps := Captures(d)
	if err := applySidecar(ctx, cs, d, agent, caps); err != nil {
		return err
	}
	if err := rollout.Wait(ctx, cs, d.Namespace, d.Name, timeout, progress); err != nil {
		undo := context.WithoutCancel(ctx)
		_ = applySidecar(undo, cs, d, Agent{Image: old, PullSecrets: agent.PullSecrets}, caps)
		return fmt.Errorf("move the sidecar of %s/%s to %s: %w", d.Namespace, d.Name, agent.Image, err)
	}
	return nil
}
