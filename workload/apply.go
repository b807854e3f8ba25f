package workload

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Apply server-side applies podSpec (nil for none) into w's pod template
// as manager: the fields manager owns become exactly these, and a field
// it no longer applies is removed, nothing else. own names the containers
// manager adds or takes away.
//
// A dry run comes first: a kind whose schema takes the container list as
// one value (a custom resource without list-map markers) would have the
// apply replace the workload's own containers, and that is refused before
// anything changes.
func (c Client) Apply(ctx context.Context, w *Workload, podSpec map[string]any, manager string, own ...string) error {
	k, _ := KindNamed(w.Kind)
	obj := map[string]any{
		"apiVersion": k.APIVersion(), "kind": k.Name,
		"metadata": map[string]any{"name": w.Name, "namespace": w.Namespace},
	}
	if podSpec != nil {
		obj["spec"] = map[string]any{"template": map[string]any{"spec": podSpec}}
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
	if lost := lostContainers(&w.Template, &after.Template, own); len(lost) > 0 {
		return fmt.Errorf("updating %s would drop its containers %v: the schema of kind %s takes the container list as one value; tunnel leaves it alone", w.Describe(), lost, k.Name)
	}
	opts.DryRun = nil
	if _, err := c.apply(ctx, k, w.Namespace, w.Name, data, opts); err != nil {
		return fmt.Errorf("update %s: %w", w.Describe(), err)
	}
	return nil
}

// lostContainers lists the containers and init containers of before,
// other than own, that after lacks.
func lostContainers(before, after *corev1.PodTemplateSpec, own []string) []string {
	var lost []string
	for _, pair := range [][2][]corev1.Container{
		{before.Spec.Containers, after.Spec.Containers}, {before.Spec.InitContainers, after.Spec.InitContainers},
	} {
		for _, c := range pair[0] {
			if slices.Contains(own, c.Name) {
				continue
			}
			if !slices.ContainsFunc(pair[1], func(a corev1.Container) bool { return a.Name == c.Name && a.Image == c.Image }) {
				lost = append(lost, c.Name)
			}
		}
	}
	return lost
}
