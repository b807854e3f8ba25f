package inject

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// Without returns a copy of a pod template as it was before any sidecar:
// for a workload made from an intercepted one (a canary), which must not
// carry another user's capture.
func Without(t *corev1.PodTemplateSpec) *corev1.PodTemplateSpec {
	t = t.DeepCopy()
	t.Spec.Containers = slices.DeleteFunc(t.Spec.Containers, func(c corev1.Container) bool { return c.Name == Container })
	t.Spec.InitContainers = slices.DeleteFunc(t.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainer })
	t.Spec.Volumes = slices.DeleteFunc(t.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == tokenVolume })
	return t
}

// OriginalPorts returns a Service's ports with every captured targetPort
// back to the app's.
func OriginalPorts(svc *corev1.Service) []corev1.ServicePort {
	ports := slices.Clone(svc.Spec.Ports)
	orig := captured(svc.Annotations)
	for i := range ports {
		if t, ok := orig[portKey(ports[i])]; ok {
			ports[i].TargetPort = t
		}
	}
	return ports
}
