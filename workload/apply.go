package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// AddedSecretsAnnot records, on a workload changed by update rather than
// server-side apply, the image pull secrets tunnel added to its pods, so
// that taking tunnel's parts out leaves the workload's own.
const AddedSecretsAnnot = "tunnel.dev/added-pull-secrets"

// Owned names the parts of a pod template one field manager adds and takes
// out: containers (and init containers) and volumes.
type Owned struct{ Containers, Volumes []string }

// Apply makes podSpec (nil for none) manager's part of w's pod template:
// the containers, init containers, volumes and pull secrets it names are
// added, the parts own names that it no longer has are taken out, and
// nothing else changes.
//
// It is a server-side apply where the kind's schema merges those lists by
// name, as the apps kinds' does. A dry run shows first whether the apply
// does exactly that; a custom resource whose schema takes a list as one
// value (Argo Rollouts' volumes) would have it replace the workload's own
// list, and such a kind is changed by an update instead (read, change
// tunnel's parts alone, write back with the version read).
func (c Client) Apply(ctx context.Context, w *Workload, podSpec map[string]any, manager string, own Owned) error {
	k, _ := KindNamed(w.Kind)
	obj := map[string]any{
		"apiVersion": k.APIVersion(), "kind": k.Name,
		"metadata": map[string]any{"name": w.Name, "namespace": w.Namespace},
	}
	var frag corev1.PodSpec
	if podSpec != nil {
		obj["spec"] = map[string]any{"template": map[string]any{"spec": podSpec}}
		if err := convert(podSpec, &frag); err != nil {
			return err
		}
	}
	data, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: manager, Force: ptr.To(true), DryRun: []string{metav1.DryRunAll}}
	dry, err := c.apply(ctx, k, w.Namespace, w.Name, data, opts)
	if err != nil {
		return fmt.Errorf("update %s: %w", w.Describe(), err)
	}
	after, err := fromObject(k, dry)
	if err != nil {
		return err
	}
	if !applied(&w.Template, &after.Template, &corev1.PodTemplateSpec{Spec: frag}, own) {
		return c.update(ctx, k, w, podSpec, &frag, manager, own)
	}
	opts.DryRun = nil
	if _, err := c.apply(ctx, k, w.Namespace, w.Name, data, opts); err != nil {
		return fmt.Errorf("update %s: %w", w.Describe(), err)
	}
	return nil
}

// applied says whether after is before with manager's parts those of frag:
// everything else the same, the pull secrets before had still there.
func applied(before, after, frag *corev1.PodTemplateSpec, own Owned) bool {
	if !equality.Semantic.DeepEqual(strip(before, own), strip(after, own)) {
		return false
	}
	for _, s := range before.Spec.ImagePullSecrets {
		if !slices.Contains(after.Spec.ImagePullSecrets, s) {
			return false
		}
	}
	return slices.Equal(ownNames(after, own), ownNames(frag, own))
}

// strip is t without the parts own names and without pull secrets.
func strip(t *corev1.PodTemplateSpec, own Owned) *corev1.PodTemplateSpec {
	t = t.DeepCopy()
	mine := func(c corev1.Container) bool { return slices.Contains(own.Containers, c.Name) }
	t.Spec.Containers = slices.DeleteFunc(t.Spec.Containers, mine)
	t.Spec.InitContainers = slices.DeleteFunc(t.Spec.InitContainers, mine)
	t.Spec.Volumes = slices.DeleteFunc(t.Spec.Volumes, func(v corev1.Volume) bool { return slices.Contains(own.Volumes, v.Name) })
	t.Spec.ImagePullSecrets = nil
	for _, l := range []*[]corev1.Container{&t.Spec.Containers, &t.Spec.InitContainers} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	if len(t.Spec.Volumes) == 0 {
		t.Spec.Volumes = nil
	}
	return t
}

// ownNames lists which of own's parts t has, in order.
func ownNames(t *corev1.PodTemplateSpec, own Owned) []string {
	var out []string
	for _, c := range slices.Concat(t.Spec.Containers, t.Spec.InitContainers) {
		if slices.Contains(own.Containers, c.Name) {
			out = append(out, "container/"+c.Name)
		}
	}
	for _, v := range t.Spec.Volumes {
		if slices.Contains(own.Volumes, v.Name) {
			out = append(out, "volume/"+v.Name)
		}
	}
	return out
}

// update changes manager's parts of w's template by read, change and
// write with the version read (retried on a conflict).
func (c Client) update(ctx context.Context, k Kind, w *Workload, podSpec map[string]any, frag *corev1.PodSpec, manager string, own Owned) error {
	var add map[string]any
	if podSpec != nil {
		if err := convert(podSpec, &add); err != nil {
			return err
		}
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := c.get(ctx, k, w.Namespace, w.Name)
		if err != nil {
			return err
		}
		spec, _, _ := unstructured.NestedMap(u.Object, "spec", "template", "spec")
		if spec == nil {
			return fmt.Errorf("%s has no pod template", w.Describe())
		}
		for _, l := range []struct {
			key   string
			names []string
		}{{"containers", own.Containers}, {"initContainers", own.Containers}, {"volumes", own.Volumes}} {
			items, _, _ := unstructured.NestedSlice(spec, l.key)
			items = slices.DeleteFunc(items, func(it any) bool {
				m, _ := it.(map[string]any)
				name, _ := m["name"].(string)
				return slices.Contains(l.names, name)
			})
			if more, ok := add[l.key].([]any); ok {
				items = append(items, more...)
			}
			if len(items) == 0 {
				delete(spec, l.key)
			} else {
				spec[l.key] = items
			}
		}
		// Pull secrets: those this added before go, those frag needs and
		// the workload lacks come, and are written down.
		annots := u.GetAnnotations()
		var before []string
		if v := annots[AddedSecretsAnnot]; v != "" {
			before = strings.Split(v, ",")
		}
		secrets, _, _ := unstructured.NestedSlice(spec, "imagePullSecrets")
		secrets = slices.DeleteFunc(secrets, func(it any) bool {
			m, _ := it.(map[string]any)
			name, _ := m["name"].(string)
			return slices.Contains(before, name)
		})
		var added []string
		for _, s := range frag.ImagePullSecrets {
			if !slices.ContainsFunc(secrets, func(it any) bool { m, _ := it.(map[string]any); return m["name"] == s.Name }) {
				secrets = append(secrets, map[string]any{"name": s.Name})
				added = append(added, s.Name)
			}
		}
		if len(secrets) == 0 {
			delete(spec, "imagePullSecrets")
		} else {
			spec["imagePullSecrets"] = secrets
		}
		if len(added) > 0 {
			if annots == nil {
				annots = map[string]string{}
			}
			annots[AddedSecretsAnnot] = strings.Join(added, ",")
		} else {
			delete(annots, AddedSecretsAnnot)
		}
		u.SetAnnotations(annots)
		if err := unstructured.SetNestedMap(u.Object, spec, "spec", "template", "spec"); err != nil {
			return err
		}
		return c.put(ctx, k, u, manager)
	})
	if err != nil {
		return fmt.Errorf("update %s: %w", w.Describe(), err)
	}
	return nil
}

// convert turns one JSON-shaped value into another through JSON.
func convert(from, to any) error {
	data, err := json.Marshal(from)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, to)
}
