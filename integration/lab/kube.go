//go:build linux

package lab

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// DynamicClient returns an admin dynamic client for the running lab.
func DynamicClient(p Paths) (dynamic.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", p.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("load the lab's admin kubeconfig: %w", err)
	}
	return dynamic.NewForConfig(rc)
}

// Client returns an admin clientset for the running lab.
func Client(p Paths) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", p.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("load the lab's admin kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	return kubernetes.NewForConfig(rc)
}

// poll calls f every interval until it returns true, an error, or the
// timeout; what names the wait in the error.
func poll(ctx context.Context, timeout time.Duration, what string, f func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := f(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: not after %s: %v", what, timeout, last)
			}
			return fmt.Errorf("%s: not after %s", what, timeout)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// nodePodCIDR waits for the controller-manager to give the node its podCIDR.
func nodePodCIDR(ctx context.Context, cs kubernetes.Interface) (string, error) {
	var cidr string
	err := poll(ctx, 90*time.Second, "node "+nodeName+" gets a podCIDR", func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		cidr = n.Spec.PodCIDR
		return cidr != "", nil
	})
	return cidr, err
}

func waitNodeReady(ctx context.Context, cs kubernetes.Interface) error {
	return poll(ctx, 120*time.Second, "node "+nodeName+" is Ready", func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return true, nil
				}
				return false, fmt.Errorf("%s: %s", c.Reason, c.Message)
			}
		}
		return false, nil
	})
}

// WaitDeployment waits until a Deployment's current generation is rolled
// out and every replica is available.
func WaitDeployment(ctx context.Context, cs kubernetes.Interface, ns, name string, timeout time.Duration) error {
	return poll(ctx, timeout, "deployment "+ns+"/"+name+" is available", func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return deploymentDone(d), nil
	})
}

func deploymentDone(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want &&
		s.AvailableReplicas == want && s.Replicas == want
}

// applyManifests renders a template from config/ and applies it with the
// lab's kubectl (server-side apply: the same objects again change nothing).
func applyManifests(ctx context.Context, p Paths, name string, d templateData) error {
	data, err := render(name, d)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, p.kube("kubectl"), "--kubeconfig", p.AdminKubeconfig(),
		"apply", "--server-side", "--force-conflicts", "--field-manager=tunnel-lab", "-f", "-")
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apply %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// checkPodDNS runs a pod of the test app that looks up the API server's
// Service name through the cluster's DNS, and waits for it to succeed.
func checkPodDNS(ctx context.Context, cs kubernetes.Interface, domain string) error {
	const ns, name = "kube-system", "lab-dns-check"
	pods := cs.CoreV1().Pods(ns)
	zero := int64(0)
	_ = pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err := poll(ctx, 30*time.Second, "old DNS check pod is gone", func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyOnFailure,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "lookup", Image: EchoImage,
				Command: []string{"/echo", "lookup", "kubernetes.default.svc." + domain},
			}},
		},
	}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create DNS check pod: %w", err)
	}
	defer pods.Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	return poll(ctx, 90*time.Second, "a pod resolves kubernetes.default.svc."+domain, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodSucceeded, fmt.Errorf("pod is %s", p.Status.Phase)
	})
}
