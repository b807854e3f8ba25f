package deploy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/rollout"
)

// FieldManager owns what tunnel deploy applies.
const FieldManager = "tunnel-deploy"

// Options shape an apply.
type Options struct {
	Namespace string // for objects that name none
	DryRun    bool   // say what would change, change nothing
	// ForceConflicts takes fields other managers (kubectl, a controller,
	// a teammate's deploy) own; without it such a conflict is an error
	// naming them, before anything is applied.
	ForceConflicts bool
	Timeout        time.Duration // per rollout
	Progress       func(string)
}

// Result is what happened, or would happen, to one object.
type Result struct {
	Object  string   `json:"object"` // kind/name, with the namespace when it has one
	Action  string   `json:"action"` // created, configured, unchanged
	Changes []string `json:"changes,omitempty"`
}

// Apply sends objs to the cluster with server-side apply. First every
// object goes through a server-side dry run, so one the API server refuses
// stops the deploy before anything changed; then (unless opt.DryRun) they
// are applied in order and every Deployment's, StatefulSet's and
// DaemonSet's rollout is waited for.
func Apply(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, objs []*unstructured.Unstructured, opt Options) ([]Result, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	type target struct {
		obj   *unstructured.Unstructured
		res   dynamic.ResourceInterface
		id    string
		force bool
	}
	var targets []target
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %s: the cluster has no such kind (%v)", ErrBadInput, gvk.Kind, o.GetName(), err)
		}
		id := strings.ToLower(gvk.Kind) + "/" + o.GetName()
		var res dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if o.GetNamespace() == "" {
				o.SetNamespace(opt.Namespace)
			}
			res = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
			id = o.GetNamespace() + "/" + id
		}
		targets = append(targets, target{obj: o, res: res, id: id})
	}

	var results []Result
	for i := range targets {
		t := &targets[i]
		t.force = opt.ForceConflicts
		dry, err := t.res.Apply(ctx, t.obj.GetName(), t.obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: t.force, DryRun: []string{metav1.DryRunAll}})
		if apierrors.IsConflict(err) && promotedOnly(err) {
			// A canary's promotion took the image this deploy declares: the
			// deploy is the source again, as it was before the canary.
			t.force = true
			dry, err = t.res.Apply(ctx, t.obj.GetName(), t.obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}})
		}
		if apierrors.IsConflict(err) {
			return nil, fmt.Errorf("%w: %s: %v; --force-conflicts takes those fields", ErrBadInput, t.id, refusal(err))
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadInput, t.id, refusal(err))
		}
		live, err := t.res.Get(ctx, t.obj.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			results = append(results, Result{Object: t.id, Action: "created"})
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", t.id, err)
		default:
			changes := diff("", comparable(live.Object), comparable(dry.Object))
			action := "configured"
			if len(changes) == 0 {
				action = "unchanged"
			}
			results = append(results, Result{Object: t.id, Action: action, Changes: changes})
		}
	}
	if opt.DryRun {
		return results, nil
	}
	for _, t := range targets {
		if _, err := t.res.Apply(ctx, t.obj.GetName(), t.obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: t.force}); err != nil {
			return results, fmt.Errorf("apply %s: %v", t.id, refusal(err))
		}
		opt.Progress(fmt.Sprintf("Applied %s", t.id))
	}
	for _, t := range targets {
		var err error
		switch t.obj.GetKind() {
		case "Deployment":
			err = rollout.Wait(ctx, cs, t.obj.GetNamespace(), t.obj.GetName(), opt.Timeout, opt.Progress)
		case "StatefulSet", "DaemonSet":
			err = rollout.WaitSet(ctx, cs, t.obj.GetKind(), t.obj.GetNamespace(), t.obj.GetName(), opt.Timeout, opt.Progress)
		}
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// refusal is the API server's own sentence for err.
func refusal(err error) string {
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Message != "" {
		return se.Status().Message
	}
	return err.Error()
}

// promotedOnly reports whether every field an apply conflicts on is one a
// tunnel canary set on promotion (under canary.FieldManager), and no one
// else's.
func promotedOnly(err error) bool {
	var se apierrors.APIStatus
	if !errors.As(err, &se) || se.Status().Details == nil || len(se.Status().Details.Causes) == 0 {
		return false
	}
	for _, c := range se.Status().Details.Causes {
		if c.Type != metav1.CauseTypeFieldManagerConflict || !strings.HasPrefix(c.Message, `conflict with "`+canary.FieldManager+`"`) {
			return false
		}
	}
	return true
}

// comparable drops what the API server keeps for itself, so a diff shows
// only what an apply changes.
func comparable(o map[string]any) map[string]any {
	o = runtimeCopy(o)
	delete(o, "status")
	if md, ok := o["metadata"].(map[string]any); ok {
		for _, k := range []string{"managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"} {
			delete(md, k)
		}
		if an, ok := md["annotations"].(map[string]any); ok {
			delete(an, "deployment.kubernetes.io/revision")
			if len(an) == 0 {
				delete(md, "annotations")
			}
		}
	}
	return o
}

func runtimeCopy(o map[string]any) map[string]any {
	return (&unstructured.Unstructured{Object: o}).DeepCopy().Object
}

// diff lists the leaves that differ between a and b as "path: old → new".
func diff(path string, a, b any) []string {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		var out []string
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range keys {
				if !yield(k) {
					return
				}
			}
		}) {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out = append(out, diff(p, am[k], bm[k])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	return []string{fmt.Sprintf("%s: %s → %s", path, show(a), show(b))}
}

func show(v any) string {
	if v == nil {
		return "(none)"
	}
	s := fmt.Sprint(v)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
