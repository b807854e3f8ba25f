package canary

import (
	"context"
	"encoding/json"
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

func (r *httpRoute) SetWeight(ctx context.Context, percent int) error {
	return r.edit(ctx, func(obj *unstructured.Unstructured) error {
		stable := stableRefs(obj.Object, r.b)
		if len(stable) == 0 {
			return fmt.Errorf("httproute %s/%s no longer sends traffic to service %s", r.b.Namespace, r.name, r.b.Stable)
		}
		if percent == 0 && !hasCanary(obj.Object, r.b) {
			return errUnchanged
		}
		ann := obj.GetAnnotations()
		var orig []*int64
		if saved, ok := ann[weightsAnnotation]; ok {
			if err := json.Unmarshal([]byte(saved), &orig); err != nil || len(orig) != len(stable) {
				return fmt.Errorf("httproute %s/%s: annotation %s does not match its rules; remove the canary backends by hand", r.b.Namespace, r.name, weightsAnnotation)
			}
		} else {
			rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
			for _, at := range stable {
				refs, _, _ := unstructured.NestedSlice(asMap(rules[at.rule]), "backendRefs")
				w, ok, _ := unstructured.NestedInt64(asMap(refs[at.ref]), "weight")
				if ok {
					orig = append(orig, &w)
				} else {
					orig = append(orig, nil)
				}
			}
			data, _ := json.Marshal(orig)
			if ann == nil {
				ann = map[string]string{}
			}
			ann[weightsAnnotation] = string(data)
			obj.SetAnnotations(ann)
		}
		rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
		for k, at := range stable {
			rule := asMap(rules[at.rule])
			refs, _, _ := unstructured.NestedSlice(rule, "backendRefs")
			base := int64(1)
			if orig[k] != nil {
				base = *orig[k]
			}
			stableRef := asMap(refs[at.ref])
			stableRef["weight"] = base * int64(100-percent)
			canary := -1
			for j, ref := range refs {
				if refersTo(asMap(ref), r.b.Namespace, r.b.Canary) {
					canary = j
				}
			}
			if canary < 0 {
				c := runtimeCopy(stableRef)
				c["name"] = r.b.Canary
				refs = append(refs, c)
				canary = len(refs) - 1
			}
			asMap(refs[canary])["weight"] = base * int64(percent)
			rule["backendRefs"] = refs
		}
		return unstructured.SetNestedSlice(obj.Object, rules, "spec", "rules")
	})
}

func (r *httpRoute) Remove(ctx context.Context) error {
	err := r.edit(ctx, func(obj *unstructured.Unstructured) error {
		ann := obj.GetAnnotations()
		var orig []*int64
		if saved, ok := ann[weightsAnnotation]; ok {
			_ = json.Unmarshal([]byte(saved), &orig)
		}
		rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
		k := 0
		for i := range rules {
			rule := asMap(rules[i])
			refs, _, _ := unstructured.NestedSlice(rule, "backendRefs")
			kept := refs[:0]
			for _, ref := range refs {
				m := asMap(ref)
				if refersTo(m, r.b.Namespace, r.b.Canary) {
					continue
				}
				if refersTo(m, r.b.Namespace, r.b.Stable) {
					if k < len(orig) && orig[k] != nil {
						m["weight"] = *orig[k]
					} else {
						delete(m, "weight")
					}
					k++
				}
				kept = append(kept, ref)
			}
			rule["backendRefs"] = kept
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
func (r *httpRoute) edit(ctx context.Context, fn func(*unstructured.Unstructured) error) error {
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
		_, err = r.dyn.Update(ctx, obj, metav1.UpdateOptions{FieldManager: FieldManager})
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
