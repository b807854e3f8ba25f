package inject

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// CheckPullSecrets says, before anything changes, when the workload's
// namespace lacks a pull secret the agent image needs: the sidecar's pods
// could not pull it. A user who may not read Secrets there is not asked
// about them (the rollout then tells the pod's reason).
func CheckPullSecrets(ctx context.Context, cs kubernetes.Interface, ns string, agent Agent) error {
	for _, name := range agent.PullSecrets {
		_, err := cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("namespace %s has no Secret %s, which the tunnel agent image is pulled with: copy it there from namespace tunnel-system (or ask an admin to)", ns, name)
		case err != nil && !apierrors.IsForbidden(err):
			return fmt.Errorf("read pull secret %s/%s: %w", ns, name, err)
		}
	}
	return nil
}
