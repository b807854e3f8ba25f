package inject

import (
	"context"
	"errors"
	"fmt"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"tunnel.dev/tunnel/rollout"
	"tunnel.dev/tunnel/workload"
)

// The Services' side of a capture: their ports pointed at the sidecar's
// listeners, and back.

// retarget points p's Service ports (ServicePort and Also) at the
// sidecar's listener, keeping the old targetPorts in each Service's
// annotation. One that fails puts back those this call pointed, so that
// none is left half-captured.
// It returns the ports it took from the app, which releaseAll gives back.
func retarget(ctx context.Context, cs kubernetes.Interface, p *Plan, listen int32) ([]ServicePort, error) {
	var done []ServicePort
	for _, sp := range append([]ServicePort{{Service: p.Service, Port: p.ServicePort}}, p.Also...) {
		took, err := retargetPort(ctx, cs, p.Workload.Ref, sp, listen)
		if err != nil {
			_ = releaseAll(context.WithoutCancel(ctx), cs, done)
			return nil, err
		}
		if took {
			done = append(done, sp)
		}
	}
	return done, nil
}

// releaseAll puts the Service ports retarget took back to the app.
func releaseAll(ctx context.Context, cs kubernetes.Interface, ports []ServicePort) error {
	var errs []error
	for _, p := range ports {
		if err := releasePort(ctx, cs, p); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("put service %s/%s back: %w", p.Service.Namespace, p.Service.Name, err))
		}
	}
	return errors.Join(errs...)
}

// releasePort puts one Service port this call captured back.
func releasePort(ctx context.Context, cs kubernetes.Interface, port ServicePort) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := cs.CoreV1().Services(port.Service.Namespace).Get(ctx, port.Service.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		caps := captured(svc.Annotations)
		for i, sp := range svc.Spec.Ports {
			if orig, ok := caps[portKey(sp)]; ok && sp.Port == port.Port.Port && sp.Protocol == port.Port.Protocol {
				svc.Spec.Ports[i].TargetPort = orig
				delete(caps, portKey(sp))
			}
		}
		if len(caps) == 0 {
			delete(svc.Annotations, CapturedAnnot)
			delete(svc.Annotations, WorkloadAnnot)
		} else {
			svc.Annotations[CapturedAnnot] = formatCaptured(caps)
		}
		if len(svc.Annotations) == 0 {
			svc.Annotations = nil
		}
		if _, err = cs.CoreV1().Services(svc.Namespace).Update(ctx, svc, metav1.UpdateOptions{FieldManager: FieldManager}); err == nil && len(caps) == 0 {
			forgetService(ctx, cs, svc.Namespace, svc.Name)
		}
		return err
	})
}

// forgetService takes tunnel's update entries out of a Service it put
// back (workload.ForgetOps), so that its owner's next apply of the
// targetPort does not conflict with tunnel; not while a capture of it is
// there again. An update that changes only managedFields (the verb a
// capture already needs) gives tunnel no entry. Best effort: the Service
// itself is as it was either way.
func forgetService(ctx context.Context, cs kubernetes.Interface, ns, name string) {
	_ = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || svc.Annotations[CapturedAnnot] != "" {
			return err
		}
		kept, ok := workload.WithoutUpdates(svc.ManagedFields, FieldManager)
		if !ok {
			return nil
		}
		svc.ManagedFields = kept
		_, err = cs.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{FieldManager: FieldManager})
		return err
	})
}

// retargetPort points one Service port at listen; took says whether this
// call took it from the app (it was not the sidecar's already).
func retargetPort(ctx context.Context, cs kubernetes.Interface, w workload.Ref, port ServicePort, listen int32) (took bool, err error) {
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		took = false
		svc, err := cs.CoreV1().Services(port.Service.Namespace).Get(ctx, port.Service.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read service %s/%s: %w", port.Service.Namespace, port.Service.Name, err)
		}
		caps := captured(svc.Annotations)
		changed := false
		for i, sp := range svc.Spec.Ports {
			if sp.Port != port.Port.Port || sp.Protocol != port.Port.Protocol {
				continue
			}
			if _, ok := caps[portKey(sp)]; !ok {
				caps[portKey(sp)] = sp.TargetPort
				took = true
			}
			if sp.TargetPort != intstr.FromInt32(listen) {
				svc.Spec.Ports[i].TargetPort = intstr.FromInt32(listen)
				changed = true
			}
		}
		if !changed && svc.Annotations[CapturedAnnot] == formatCaptured(caps) {
			return nil
		}
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		svc.Annotations[CapturedAnnot] = formatCaptured(caps)
		svc.Annotations[WorkloadAnnot] = w.String()
		_, err = cs.CoreV1().Services(svc.Namespace).Update(ctx, svc, metav1.UpdateOptions{FieldManager: FieldManager})
		if err != nil {
			return fmt.Errorf("point service %s/%s at the sidecar: %w", svc.Namespace, svc.Name, err)
		}
		return nil
	})
	return took, err
}

// restoreServices gives every Service tunnel retargeted for workload (a
// workload.Ref's form) its
// old targetPorts back and drops tunnel's annotations.
func restoreServices(ctx context.Context, cs kubernetes.Interface, ns, workload string) ([]string, error) {
	list, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services in namespace %s: %w", ns, err)
	}
	var restored []string
	for _, s := range list.Items {
		if s.Annotations[WorkloadAnnot] != workload {
			continue
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			svc, err := cs.CoreV1().Services(ns).Get(ctx, s.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			caps := captured(svc.Annotations)
			for i, sp := range svc.Spec.Ports {
				if orig, ok := caps[portKey(sp)]; ok {
					svc.Spec.Ports[i].TargetPort = orig
				}
			}
			delete(svc.Annotations, CapturedAnnot)
			delete(svc.Annotations, WorkloadAnnot)
			if len(svc.Annotations) == 0 {
				svc.Annotations = nil
			}
			_, err = cs.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{FieldManager: FieldManager})
			return err
		})
		if apierrors.IsNotFound(err) {
			continue // deleted meanwhile: nothing to restore or wait for
		}
		if err != nil {
			return nil, fmt.Errorf("restore service %s/%s: %w", ns, s.Name, err)
		}
		forgetService(ctx, cs, ns, s.Name)
		restored = append(restored, s.Name)
	}
	return restored, nil
}

// awaitEndpoints waits until the EndpointSlices of services name no
// sidecar port, then gives kube-proxy time to apply them: only then may
// the sidecars go, or connections would still be sent to their ports.
// listeners are the sidecar's capture ports, when known; else any port
// of tunnel's range counts.
func awaitEndpoints(ctx context.Context, cs kubernetes.Interface, ns string, services []string, listeners map[int32]bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, svc := range services {
		for {
			slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
			if err != nil {
				return fmt.Errorf("read the endpoints of service %s/%s: %w", ns, svc, err)
			}
			if !sidecarPorts(slices.Items, listeners) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: service %s/%s still sends traffic to the sidecar after %s", rollout.ErrFailed, ns, svc, timeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(rollout.KubeProxySync):
	}
	return nil
}

func sidecarPorts(slices []discoveryv1.EndpointSlice, listeners map[int32]bool) bool {
	for _, s := range slices {
		for _, p := range s.Ports {
			switch {
			case p.Port == nil:
			case listeners != nil && listeners[*p.Port]:
				return true
			case listeners == nil && *p.Port >= FirstCapture && *p.Port < FirstCapture+1000: // the metrics port is no Service's target
				return true
			}
		}
	}
	return false
}
