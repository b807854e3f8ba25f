//go:build linux

package lab

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/workload"
)

// DeployEchoAs runs the test app as a workload of kind (Deployment,
// StatefulSet, DaemonSet, ReplicaSet or Rollout, the last with the lab's
// Argo Rollouts, EnsureArgoRollouts) named name, with the Service service
// in front of it, and waits until replicas pods are ready (a DaemonSet's:
// one, on the lab's node) and kube-proxy serves the Service's address.
func DeployEchoAs(ctx context.Context, l *Lab, cs kubernetes.Interface, dyn dynamic.Interface, ns, kind, name, service string, replicas int32) error {
	labels := map[string]string{"app": name}
	meta := metav1.ObjectMeta{Name: name, Namespace: ns}
	sel := &metav1.LabelSelector{MatchLabels: labels}
	tmpl := EchoTemplate(labels)
	apps := cs.AppsV1()
	var err error
	switch kind {
	case "Deployment":
		_, err = apps.Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: meta,
			Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	case "StatefulSet":
		_, err = apps.StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: meta,
			// Its governing Service, the one its pods' names live under,
			// is named as the set is (a headless one the caller makes).
			Spec: appsv1.StatefulSetSpec{Replicas: &replicas, Selector: sel, Template: tmpl, ServiceName: name}}, metav1.CreateOptions{})
	case "DaemonSet":
		replicas = 1
		_, err = apps.DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: meta,
			Spec: appsv1.DaemonSetSpec{Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	case "ReplicaSet":
		_, err = apps.ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{ObjectMeta: meta,
			Spec: appsv1.ReplicaSetSpec{Replicas: &replicas, Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	case "Rollout":
		// A volume of its own: Argo's schema takes the volume list as one
		// value, which a server-side apply of the sidecar's token volume
		// would replace (tunnel changes such a kind by update instead).
		tmpl.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		tmpl.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
		var t, s map[string]any
		if t, err = runtime.DefaultUnstructuredConverter.ToUnstructured(&tmpl); err != nil {
			return err
		}
		if s, err = runtime.DefaultUnstructuredConverter.ToUnstructured(sel); err != nil {
			return err
		}
		ro := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
			"metadata": map[string]any{"name": name, "namespace": ns},
			// A canary without steps goes to the new template at once.
			"spec": map[string]any{"replicas": int64(replicas), "selector": s, "template": t,
				"strategy": map[string]any{"canary": map[string]any{}}},
		}}
		k, _ := workload.KindNamed(workload.Rollout)
		_, err = dyn.Resource(k.Resource).Namespace(ns).Create(ctx, ro, metav1.CreateOptions{})
	default:
		return fmt.Errorf("the lab runs no workload of kind %q", kind)
	}
	if err != nil {
		return fmt.Errorf("create %s %s/%s: %w", kind, ns, name, err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, EchoService(ns, service, labels), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s/%s: %w", ns, service, err)
	}
	if err := poll(ctx, 2*time.Minute, fmt.Sprintf("%d pods of %s %s/%s are ready", replicas, kind, ns, name), func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, err
		}
		ready := int32(0)
		for _, p := range pods.Items {
			for _, c := range p.Status.Conditions {
				if p.DeletionTimestamp == nil && c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready == replicas, fmt.Errorf("%d ready", ready)
	}); err != nil {
		return err
	}
	return awaitService(ctx, l, cs, ns, service)
}
