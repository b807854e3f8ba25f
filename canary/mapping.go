package canary

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// mapping steers with Emissary-ingress Mappings: a second Mapping with the
// same match and `weight: N` takes N percent of its traffic, and the
// stable Mapping, left untouched, keeps the rest.
type mapping struct {
	dyn  dynamic.ResourceInterface
	name string
	b    Backends
	port int32
}

func newMapping(ctx context.Context, dyn dynamic.Interface, b Backends, name string) (Router, error) {
	m := &mapping{dyn: dyn.Resource(mappingGVR).Namespace(b.Namespace), name: name, b: b}
	obj, err := m.dyn.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read mapping %s/%s: %w", b.Namespace, name, err)
	}
	if !mappingTargets(obj.Object, b) {
		return nil, fmt.Errorf("mapping %s/%s sends no traffic to service %s", b.Namespace, name, b.Stable)
	}
	svc, _, _ := unstructured.NestedString(obj.Object, "spec", "service")
	scheme, _, _, port := mappingService(svc)
	m.port = 80
	if strings.EqualFold(scheme, "https://") {
		m.port = 443
	}
	if n, err := strconv.Atoi(strings.TrimPrefix(port, ":")); err == nil {
		m.port = int32(n)
	}
	return m, nil
}

func (m *mapping) Port() int32 { return m.port }

func (m *mapping) Ref() string { return KindMapping + "/" + m.name }

// CanaryName is the name of the Mapping that carries the canary's share.
func (m *mapping) CanaryName() string { return m.name + "-canary" }

// mappingService splits a Mapping's service, [SCHEME://]NAME[.NAMESPACE...][:PORT],
// into its scheme, name, the rest of the host, and the port part.
func mappingService(s string) (scheme, name, rest, port string) {
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, s = s[:i+3], s[i+3:]
	}
	if i := strings.LastIndex(s, ":"); i >= 0 {
		s, port = s[:i], s[i:]
	}
	name, rest, _ = strings.Cut(s, ".")
	if rest != "" {
		rest = "." + rest
	}
	return scheme, name, rest, port
}

// mappingTargets says whether a Mapping sends to the stable Service.
func mappingTargets(obj map[string]any, b Backends) bool {
	svc, _, _ := unstructured.NestedString(obj, "spec", "service")
	_, name, rest, _ := mappingService(svc)
	ns, _, _ := strings.Cut(strings.TrimPrefix(rest, "."), ".")
	return name == b.Stable && (ns == "" || ns == b.Namespace)
}

// MatchName is the name of the Mapping that carries a dark launch's requests.
func (m *mapping) MatchName() string { return m.name + "-canary-match" }

func (m *mapping) Split(ctx context.Context, s Split) error {
	return m.split(ctx, s, nil)
}

func (m *mapping) Try(ctx context.Context, s Split) error {
	err := m.split(ctx, s, []string{metav1.DryRunAll})
	if apierrors.IsInvalid(err) {
		return fmt.Errorf("mapping %s/%s cannot carry %s: %w", m.b.Namespace, m.name, DescribeSplit(s), err)
	}
	return err
}

// split applies (or deletes) the two Mappings a split needs: one with the
// stable's match and the canary's weight, one with the match's header
// added. Emissary ranks Mappings of one prefix by the length of their
// header names and values, so the added header ranks the second above the
// stable Mapping; against another Mapping of the prefix with headers of
// its own, the longer wins.
func (m *mapping) split(ctx context.Context, s Split, dryRun []string) error {
	stable, err := m.dyn.Get(ctx, m.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read mapping %s/%s: %w", m.b.Namespace, m.name, err)
	}
	if !mappingTargets(stable.Object, m.b) {
		return fmt.Errorf("mapping %s/%s no longer sends traffic to service %s", m.b.Namespace, m.name, m.b.Stable)
	}
	spec, _, _ := unstructured.NestedMap(stable.Object, "spec")
	scheme, _, rest, port := mappingService(spec["service"].(string))
	spec["service"] = scheme + m.b.Canary + rest + port
	var match map[string]any
	if s.Match != nil {
		match = runtimeCopy(spec)
		delete(match, "weight")
		header, value, regex := s.Match.Header()
		for _, key := range []string{"headers", "regex_headers"} {
			have, _, _ := unstructured.NestedStringMap(match, key)
			for h := range have {
				if strings.EqualFold(h, header) {
					return fmt.Errorf("mapping %s/%s already matches header %s, so a second Mapping cannot also pick %s", m.b.Namespace, m.name, h, s.Match.Describe())
				}
			}
		}
		key := "headers"
		if regex {
			key = "regex_headers"
		}
		if _, _, err := unstructured.NestedStringMap(match, key); err != nil {
			return fmt.Errorf("mapping %s/%s: spec.%s: %w", m.b.Namespace, m.name, key, err)
		}
		h, _, _ := unstructured.NestedMap(match, key)
		if h == nil {
			h = map[string]any{}
		}
		h[strings.ToLower(header)] = value
		match[key] = h
	}
	spec["weight"] = int64(s.Weight)
	if s.Weight == 0 {
		spec = nil // no weighted Mapping at all
	}
	for _, want := range []struct {
		name string
		spec map[string]any // nil: the Mapping must not be there
	}{{m.CanaryName(), spec}, {m.MatchName(), match}} {
		if want.spec == nil {
			if dryRun == nil {
				if err := m.delete(ctx, want.name); err != nil {
					return err
				}
			}
			continue
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": mappingGVR.GroupVersion().String(),
			"kind":       "Mapping",
			"metadata": map[string]any{
				"name": want.name, "namespace": m.b.Namespace,
				"labels": map[string]any{Label: m.b.Stable},
			},
			"spec": want.spec,
		}}
		if _, err := m.dyn.Apply(ctx, want.name, obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: dryRun}); err != nil {
			return fmt.Errorf("apply mapping %s/%s: %w", m.b.Namespace, want.name, err)
		}
	}
	return nil
}

func (m *mapping) Remove(ctx context.Context) error {
	if err := m.delete(ctx, m.CanaryName()); err != nil {
		return err
	}
	return m.delete(ctx, m.MatchName())
}

func (m *mapping) delete(ctx context.Context, name string) error {
	err := m.dyn.Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete mapping %s/%s: %w", m.b.Namespace, name, err)
	}
	return nil
}
