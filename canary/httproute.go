package canary

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// weightsAnnotation keeps, on the route, the stable backends' weights from
// before the canary (null where none was set), so Remove restores them
// exactly whichever CLI calls it.
const weightsAnnotation = "tunnel.dev/canary-stable-weights"

// httpRoute steers with a Gateway API HTTPRoute's backendRefs weights:
// every rule that sends to the stable Service gets the canary beside it.
type httpRoute struct {
	dyn  dynamic.ResourceInterface
	name string
	b    Backends
	port int32
}

func newHTTPRoute(ctx context.Context, dyn dynamic.Interface, b Backends, name string) (Router, error) {
	r := &httpRoute{dyn: dyn.Resource(httpRouteGVR).Namespace(b.Namespace), name: name, b: b}
	obj, err := r.dyn.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read httproute %s/%s: %w", b.Namespace, name, err)
	}
	refs := stableRefs(obj.Object, b)
	if len(refs) == 0 {
		return nil, fmt.Errorf("httproute %s/%s sends no traffic to service %s", b.Namespace, name, b.Stable)
	}
	rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
	backends, _, _ := unstructured.NestedSlice(asMap(rules[refs[0].rule]), "backendRefs")
	port, _, _ := unstructured.NestedInt64(asMap(backends[refs[0].ref]), "port")
	r.port = int32(port)
	return r, nil
}

func (r *httpRoute) Port() int32 { return r.port }

func (r *httpRoute) Ref() string { return KindHTTPRoute + "/" + r.name }

// backendRef is where one backendRef sits in a route.
type backendRef struct{ rule, ref int }

// stableRefs finds the backendRefs to the stable Service.
func stableRefs(route map[string]any, b Backends) []backendRef {
	var out []backendRef
	rules, _, _ := unstructured.NestedSlice(route, "spec", "rules")
	for i, rule := range rules {
		refs, _, _ := unstructured.NestedSlice(asMap(rule), "backendRefs")
		for j, ref := range refs {
			if refersTo(asMap(ref), b.Namespace, b.Stable) {
				out = append(out, backendRef{i, j})
			}
		}
	}
	return out
}

func refersTo(ref map[string]any, ns, svc string) bool {
	str := func(k string) string { s, _ := ref[k].(string); return s }
	return (str("group") == "" || str("group") == "core") && (str("kind") == "" || str("kind") == "Service") &&
		str("name") == svc && (str("namespace") == "" || str("namespace") == ns)
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }

func (r *httpRoute) Split(ctx context.Context, s Split) error {
	return r.edit(ctx, metav1.UpdateOptions{FieldManager: FieldManager}, func(obj *unstructured.Unstructured) error {
		return splitRoute(obj, r.b, r.name, s)
	})
}

func (r *httpRoute) Try(ctx context.Context, s Split) error {
	err := r.edit(ctx, metav1.UpdateOptions{FieldManager: FieldManager, DryRun: []string{metav1.DryRunAll}}, func(obj *unstructured.Unstructured) error {
		return splitRoute(obj, r.b, r.name, s)
	})
	if apierrors.IsInvalid(err) {
		return fmt.Errorf("httproute %s/%s cannot carry %s: %w", r.b.Namespace, r.name, DescribeSplit(s), err)
	}
	return err
}

func (r *httpRoute) Remove(ctx context.Context) error {
	err := r.edit(ctx, metav1.UpdateOptions{FieldManager: FieldManager}, func(obj *unstructured.Unstructured) error {
		ann := obj.GetAnnotations()
		_, saved := ann[weightsAnnotation]
		if !saved && !hasCanary(obj.Object, r.b) {
			return errUnchanged
		}
		rules, err := pristineRules(obj, r.b, r.name, false)
		if err != nil {
			return err
		}
		delete(ann, weightsAnnotation)
		obj.SetAnnotations(ann)
		return unstructured.SetNestedSlice(obj.Object, rules, "spec", "rules")
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// edit reads the route, changes it with fn and writes it back, again when
// someone else wrote it in between.
func (r *httpRoute) edit(ctx context.Context, opts metav1.UpdateOptions, fn func(*unstructured.Unstructured) error) error {
	for {
		obj, err := r.dyn.Get(ctx, r.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := fn(obj); errors.Is(err, errUnchanged) {
			return nil
		} else if err != nil {
			return err
		}
		_, err = r.dyn.Update(ctx, obj, opts)
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update httproute %s/%s: %w", r.b.Namespace, r.name, err)
		}
		return nil
	}
}

// errUnchanged tells edit that there is nothing to write.
var errUnchanged = errors.New("unchanged")

// hasCanary says whether any rule of the route sends to the canary.
func hasCanary(route map[string]any, b Backends) bool {
	return len(stableRefs(route, Backends{Namespace: b.Namespace, Stable: b.Canary})) > 0
}

func runtimeCopy(m map[string]any) map[string]any {
	return (&unstructured.Unstructured{Object: m}).DeepCopy().Object
}
