package canary

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/inject"
)

// trackLabel tells a canary's pods from the stable ones.
const trackLabel = "tunnel.dev/track"

// Workloads finds the Deployment behind the stable Service and makes,
// promotes and removes its canary.
type Workloads struct {
	CS        kubernetes.Interface
	Namespace string
}

// Stable returns the Service and the one Deployment whose pods it selects.
func (w Workloads) Stable(ctx context.Context, service string) (*corev1.Service, *appsv1.Deployment, error) {
	svc, err := w.CS.CoreV1().Services(w.Namespace).Get(ctx, service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("service %s not found in namespace %s", service, w.Namespace)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read service %s/%s: %w", w.Namespace, service, err)
	}
	if len(svc.Spec.Selector) == 0 {
		return nil, nil, fmt.Errorf("service %s/%s has no selector, so no Deployment to make a canary of", w.Namespace, service)
	}
	list, err := w.CS.AppsV1().Deployments(w.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list deployments in namespace %s: %w", w.Namespace, err)
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	var found []*appsv1.Deployment
	for i := range list.Items {
		d := &list.Items[i]
		if d.Spec.Template.Labels[trackLabel] != "canary" && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return nil, nil, fmt.Errorf("no Deployment in namespace %s runs the pods of service %s", w.Namespace, service)
	case 1:
		return svc, found[0], nil
	}
	names := make([]string, len(found))
	for i, d := range found {
		names[i] = d.Name
	}
	return nil, nil, fmt.Errorf("service %s selects the pods of several Deployments (%s); a canary needs one", service, strings.Join(names, ", "))
}

// Free says whether name is free for service's canary: a Deployment or
// Service of that name that is not one is someone else's, and stays so.
func (w Workloads) Free(ctx context.Context, name, service string) error {
	d, err := w.CS.AppsV1().Deployments(w.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil && d.Labels[Label] != service {
		return fmt.Errorf("deployment %s/%s exists and is not a canary of %s: a canary would replace it", w.Namespace, name, service)
	}
	s, err := w.CS.CoreV1().Services(w.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil && s.Labels[Label] != service {
		return fmt.Errorf("service %s/%s exists and is not a canary of %s: a canary would replace it", w.Namespace, name, service)
	}
	return nil
}

// Container returns the index of the container the canary changes.
func Container(d *appsv1.Deployment, name string) (int, error) {
	cs := d.Spec.Template.Spec.Containers
	if name == "" {
		return 0, nil
	}
	var names []string
	for i, c := range cs {
		if c.Name == name {
			return i, nil
		}
		names = append(names, c.Name)
	}
	return 0, fmt.Errorf("deployment %s has no container %s (it has %s)", d.Name, name, strings.Join(names, ", "))
}

// canaryLabels are the canary pods' labels: the stable pods' without the
// keys the stable Service and Deployment select by, so neither takes them.
func canaryLabels(svc *corev1.Service, d *appsv1.Deployment, name string) (pod, sel map[string]string) {
	pod = maps.Clone(d.Spec.Template.Labels)
	for k := range svc.Spec.Selector {
		delete(pod, k)
	}
	for k := range d.Spec.Selector.MatchLabels {
		delete(pod, k)
	}
	sel = map[string]string{Label: name, trackLabel: "canary"}
	maps.Copy(pod, sel)
	return pod, sel
}

// The canary's Deployment carries what its record must say, so a driver
// checks the record (a ConfigMap others may edit) against it before it
// deletes or re-images anything.
const (
	annImage       = "tunnel.dev/canary-image"
	annPrometheus  = "tunnel.dev/canary-prometheus"
	annStable      = "tunnel.dev/canary-stable"
	annStableImage = "tunnel.dev/canary-stable-image"
	annContainer   = "tunnel.dev/canary-container"
	annRoute       = "tunnel.dev/canary-route"
	annPort        = "tunnel.dev/canary-port"
	annMatch       = "tunnel.dev/canary-match"
	annChecks      = "tunnel.dev/canary-checks"
)

// witness is what the canary's Deployment records of st.
func witness(st *State) map[string]string {
	return map[string]string{annImage: st.Spec.Image, annPrometheus: st.Spec.Prometheus, annStable: st.Stable, annStableImage: st.StableImage,
		annContainer: st.Spec.Container, annRoute: st.Route, annPort: strconv.Itoa(int(st.Port)),
		annMatch: st.Spec.Match, annChecks: checksDigest(st.Spec.Custom)}
}

// errUntrusted says a canary's record does not match its Deployment.
var errUntrusted = errors.New("the canary's record does not match what it started")

// Trust checks st against the canary's Deployment: it is tunnel's canary of
// st's Service, and its image, stable Deployment, stable image and
// Prometheus are st's. gone says the Deployment is not there (any more).
func (w Workloads) Trust(ctx context.Context, st *State) (gone bool, err error) {
	d, err := w.CS.AppsV1().Deployments(w.Namespace).Get(ctx, st.Canary, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the canary deployment %s: %w", st.Canary, err)
	}
	if d.Labels[Label] != st.Spec.Service {
		return false, fmt.Errorf("%w: deployment %s is not tunnel's canary of %s", errUntrusted, d.Name, st.Spec.Service)
	}
	for k, v := range witness(st) {
		if d.Annotations[k] != v {
			return false, fmt.Errorf("%w: the record says %s %q, the canary was started with %q (someone edited configmap %s)",
				errUntrusted, strings.TrimPrefix(k, "tunnel.dev/canary-"), v, d.Annotations[k], configMapName(st.Spec.Service))
		}
	}
	return false, nil
}

// Create applies the canary Deployment (the stable one's spec with the new
// image) and its Service (the stable one's ports); again is harmless.
func (w Workloads) Create(ctx context.Context, svc *corev1.Service, d *appsv1.Deployment, name, image string, container int, note map[string]string) error {
	podLabels, sel := canaryLabels(svc, d, name)
	// An intercepted workload's sidecar and captures stay with it.
	tmpl := inject.Without(&d.Spec.Template)
	tmpl.Labels = podLabels
	tmpl.Spec.Containers[container].Image = image
	owned := map[string]string{Label: svc.Name}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.Namespace, Labels: owned, Annotations: note},
		Spec: appsv1.DeploymentSpec{
			Replicas: d.Spec.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: *tmpl,
		},
	}
	if err := w.apply(ctx, "deployments", dep); err != nil {
		return err
	}
	cs := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.Namespace, Labels: owned},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: inject.OriginalPorts(svc)},
	}
	for i := range cs.Spec.Ports {
		cs.Spec.Ports[i].NodePort = 0
	}
	return w.apply(ctx, "services", cs)
}

func (w Workloads) apply(ctx context.Context, resource string, obj any) error {
	data, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: &force}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		_, err = w.CS.AppsV1().Deployments(w.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
	case *corev1.Service:
		_, err = w.CS.CoreV1().Services(w.Namespace).Patch(ctx, o.Name, types.ApplyPatchType, data, opts)
	}
	if err != nil {
		return fmt.Errorf("apply the canary's %s: %w", strings.TrimSuffix(resource, "s"), err)
	}
	return nil
}

// Delete removes the canary's Deployment and Service of service; gone
// already is fine, and what is not tunnel's canary of service is not
// touched.
func (w Workloads) Delete(ctx context.Context, name, service string) error {
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	if name != service+"-canary" {
		return fmt.Errorf("%w: %s is not the canary of %s", errUntrusted, name, service)
	}
	if d, err := w.CS.AppsV1().Deployments(w.Namespace).Get(ctx, name, metav1.GetOptions{}); err == nil && d.Labels[Label] != service {
		return fmt.Errorf("%w: deployment %s is not tunnel's canary of %s: left alone", errUntrusted, name, service)
	}
	if s, err := w.CS.CoreV1().Services(w.Namespace).Get(ctx, name, metav1.GetOptions{}); err == nil && s.Labels[Label] != service {
		return fmt.Errorf("%w: service %s is not tunnel's canary of %s: left alone", errUntrusted, name, service)
	}
	if err := w.CS.AppsV1().Deployments(w.Namespace).Delete(ctx, name, opts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the canary deployment %s: %w", name, err)
	}
	if err := w.CS.CoreV1().Services(w.Namespace).Delete(ctx, name, opts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the canary service %s: %w", name, err)
	}
	return nil
}

// SetImage gives the stable Deployment's container the image; only that
// field changes, so the rest of the spec stays the user's.
func (w Workloads) SetImage(ctx context.Context, deployment, container, image string) error {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []map[string]string{{"name": container, "image": image}},
	}}}})
	if err != nil {
		return err
	}
	_, err = w.CS.AppsV1().Deployments(w.Namespace).Patch(ctx, deployment, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager})
	if err != nil {
		return fmt.Errorf("set the image of deployment %s: %w", deployment, err)
	}
	return nil
}

// checksDigest stands for a canary's own checks on its Deployment: the
// driver runs them with its user's credentials and writes their values in
// the record, so an edited record must not change them.
func checksDigest(c []Custom) string {
	if len(c) == 0 {
		return ""
	}
	data, _ := json.Marshal(c)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
