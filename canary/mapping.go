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

func (m *mapping) SetWeight(ctx context.Context, percent int) error {
	if percent == 0 {
		if _, err := m.dyn.Get(ctx, m.CanaryName(), metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil
		}
	}
	stable, err := m.dyn.Get(ctx, m.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read mapping %s/%s: %w", m.b.Namespace, m.name, err)
	}
	spec, _, _ := unstructured.NestedMap(stable.Object, "spec")
	if !mappingTargets(stable.Object, m.b) {
		return fmt.Errorf("mapping %s/%s no longer sends traffic to service %s", m.b.Namespace, m.name, m.b.Stable)
	}
	scheme, _, rest, port := mappingService(spec["service"].(string))
	spec["service"] = scheme + m.b.Canary + rest + port
	spec["weight"] = int64(percent)
	canary := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": mappingGVR.GroupVersion().String(),
		"kind":       "Mapping",
		"metadata": map[string]any{
			"name": m.CanaryName(), "namespace": m.b.Namespace,
			"labels": map[string]any{Label: m.b.Stable},
		},
		"spec": spec,
	}}
	_, err = m.dyn.Apply(ctx, m.CanaryName(), canary, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("apply mapping %s/%s: %w", m.b.Namespace, m.CanaryName(), err)
	}
	return nil
}

func (m *mapping) Remove(ctx context.Context) error {
	err := m.dyn.Delete(ctx, m.CanaryName(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete mapping %s/%s: %w", m.b.Namespace, m.CanaryName(), err)
	}
	return nil
}
