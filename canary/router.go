package canary

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"tunnel.dev/tunnel/access"
)

// Router steers a share of a Service's traffic to its canary: the seam
// between the canary's steps and one kind of gateway configuration.
type Router interface {
	// Ref names what it steers, as KIND/NAME.
	Ref() string
	// Split divides the stable Service's traffic as s says, from whatever
	// split the route had; Split{} on a route without the canary changes
	// nothing.
	Split(ctx context.Context, s Split) error
	// Try checks that the route can carry s, changing nothing: the
	// gateway's own rules (and the API server's dry run) say so before a
	// canary creates anything.
	Try(ctx context.Context, s Split) error
	// Remove takes the canary out, leaving the route as it was before.
	Remove(ctx context.Context) error
	// Port is the stable Service's port the route sends to.
	Port() int32
}

// Split is how a route divides traffic between stable and canary.
type Split struct {
	Weight int    // percent of the traffic to the canary
	Match  *Match // requests that go to the canary whatever the weight; nil for none
}

// Backends are the stable and canary Services a router moves traffic between.
type Backends struct {
	Namespace string
	Stable    string
	Canary    string
	Port      int32 // the Service port, when the route names one
}

var (
	httpRouteGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	mappingGVR   = schema.GroupVersionResource{Group: "getambassador.io", Version: "v3alpha1", Resource: "mappings"}
)

// previewLabel marks an intercept's preview route (package preview): a
// route of a laptop's, never the Service's own.
const previewLabel = "tunnel.dev/preview-for"

// Route kinds, as --route names them.
const (
	KindHTTPRoute = "httproute"
	KindMapping   = "mapping"
)

// FindRouter returns the router for ref (KIND/NAME or NAME, an HTTPRoute),
// or, when ref is empty, for the one HTTPRoute or Emissary Mapping that
// sends traffic to the stable Service. It also returns the Service port
// the route uses.
func FindRouter(ctx context.Context, dyn dynamic.Interface, b Backends, ref string) (Router, error) {
	if ref != "" {
		kind, name, ok := strings.Cut(ref, "/")
		if !ok {
			kind, name = KindHTTPRoute, ref
		}
		switch strings.ToLower(kind) {
		case KindHTTPRoute, "httproutes", "httproute.gateway.networking.k8s.io":
			return newHTTPRoute(ctx, dyn, b, name)
		case KindMapping, "mappings", "mapping.getambassador.io":
			return newMapping(ctx, dyn, b, name)
		}
		return nil, fmt.Errorf("--route %s: unknown kind %q, want httproute/NAME or mapping/NAME", ref, kind)
	}
	var found []string
	routes, err := dyn.Resource(httpRouteGVR).Namespace(b.Namespace).List(ctx, metav1.ListOptions{})
	if apierrors.IsForbidden(err) {
		return nil, fmt.Errorf("%w: you may not list httproutes.gateway.networking.k8s.io in namespace %s, which finding the route to %s needs (or name it with --route)",
			access.ErrForbidden, b.Namespace, b.Stable)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("list HTTPRoutes in namespace %s: %w", b.Namespace, err)
	}
	if err == nil {
		for _, r := range routes.Items {
			if _, preview := r.GetLabels()[previewLabel]; !preview && len(stableRefs(r.Object, b)) > 0 {
				found = append(found, KindHTTPRoute+"/"+r.GetName())
			}
		}
	}
	maps, err := dyn.Resource(mappingGVR).Namespace(b.Namespace).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, m := range maps.Items {
			_, preview := m.GetLabels()[previewLabel]
			if _, isCanary := m.GetLabels()[Label]; !isCanary && !preview && mappingTargets(m.Object, b) {
				found = append(found, KindMapping+"/"+m.GetName())
			}
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Errorf("no HTTPRoute or Emissary Mapping in namespace %s sends traffic to service %s: name one with --route", b.Namespace, b.Stable)
	case len(found) > 1:
		return nil, fmt.Errorf("several routes send traffic to service %s (%s): name one with --route", b.Stable, strings.Join(found, ", "))
	}
	return FindRouter(ctx, dyn, b, found[0])
}

// OpenRouter returns the router a canary's record names, without reading
// it: taking a canary out must work even when the route has changed.
func OpenRouter(dyn dynamic.Interface, b Backends, ref string) (Router, error) {
	kind, name, _ := strings.Cut(ref, "/")
	switch kind {
	case KindHTTPRoute:
		return &httpRoute{dyn: dyn.Resource(httpRouteGVR).Namespace(b.Namespace), name: name, b: b}, nil
	case KindMapping:
		return &mapping{dyn: dyn.Resource(mappingGVR).Namespace(b.Namespace), name: name, b: b}, nil
	}
	return nil, fmt.Errorf("the canary's record names an unknown route %q", ref)
}

// MatchStep is the step of a dark launch where only the matching requests
// reach the canary: "match" in --steps, 0 in a record.
const MatchStep = 0

// ParseSteps reads "5,25,50,100": ascending percentages, the last at most
// 100, after "match" for a dark launch's step.
func ParseSteps(s string) ([]int, error) {
	var out []int
	for i, f := range strings.Split(s, ",") {
		var n int
		if strings.TrimSpace(f) == "match" {
			if i > 0 {
				return nil, fmt.Errorf("--steps %s: match can only be the first step", s)
			}
			out = append(out, MatchStep)
			continue
		}
		if _, err := fmt.Sscanf(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "%")), "%d", &n); err != nil {
			return nil, fmt.Errorf("--steps %s: %q is not a percentage", s, f)
		}
		if n < 1 || n > 100 {
			return nil, fmt.Errorf("--steps %s: %d%% is not between 1 and 100", s, n)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("--steps %s: the steps must go up", s)
		}
		out = append(out, n)
	}
	return out, nil
}
