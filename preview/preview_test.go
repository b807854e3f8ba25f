package preview

import (
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
)

func route(name string, labels map[string]any, backend string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": name, "namespace": "shop", "labels": labels},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"name": "lab", "namespace": "gw"}},
			"hostnames":  []any{"shop.example"},
			"rules":      []any{map[string]any{"backendRefs": []any{map[string]any{"name": backend, "port": int64(80)}}}},
		},
	}}
}

func fakeDyn(objs ...runtime.Object) *dynfake.FakeDynamicClient {
	return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"}, objs...)
}

func TestHost(t *testing.T) {
	a, b := Host("echo-http-Alice_laptop", "shop", "preview.example."), Host("echo-http-Alice_laptop", "shop", "preview.example.")
	if !regexp.MustCompile(`^echo-http-alice-laptop-shop-[0-9a-f]{6}\.preview\.example$`).MatchString(a) || a == b {
		t.Errorf("Host = %q, %q: want the name, the namespace and a token of their own", a, b)
	}
	if h := Host(strings.Repeat("a", 70), "ns", "x"); len(strings.Split(h, ".")[0]) > 63 {
		t.Errorf("Host %q: a label over 63 characters", h)
	}
	if n := RouteName("Echo_" + strings.Repeat("x", 80)); len(n) > 63 || strings.ContainsAny(n, "_E") {
		t.Errorf("RouteName = %q", n)
	}
	// Two long names alike in their first 48 characters get routes of
	// their own; a short one is kept whole.
	long := strings.Repeat("checkout-frontend-", 3)
	if a, b := RouteName(long+"alice"), RouteName(long+"bob"); a == b || len(a) > 63 || len(b) > 63 {
		t.Errorf("RouteName of two long names: %q, %q", a, b)
	}
	if n := RouteName("web-http-alice"); n != "tunnel-preview-web-http-alice" {
		t.Errorf("RouteName of a short name = %q", n)
	}
}

// The preview route is one of its own beside the Service's: the same
// parents, the intercept's host, the header set, the Service's port; the
// Service's route is not touched, and a second preview still finds it.
func TestOpenAndClose(t *testing.T) {
	dyn := fakeDyn(route("web", nil, "web"))
	s := Spec{Namespace: "shop", Service: "web", Intercept: "web-http-alice", Owner: "alice@laptop", Host: "web-http-alice.preview.example",
		Header: "x-tunnel-dev", Value: "alice", Port: 80, Domain: "preview.example", Wait: time.Millisecond}
	ref, url, err := Open(t.Context(), dyn, s)
	if err != nil {
		t.Fatal(err)
	}
	if ref != "httproute/tunnel-preview-web-http-alice" || url != "http://web-http-alice.preview.example/" {
		t.Errorf("Open = %s %s", ref, url)
	}
	got, err := dyn.Resource(httpRouteGVR).Namespace("shop").Get(t.Context(), "tunnel-preview-web-http-alice", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hosts, _, _ := unstructured.NestedStringSlice(got.Object, "spec", "hostnames")
	parents, _, _ := unstructured.NestedSlice(got.Object, "spec", "parentRefs")
	rules, _, _ := unstructured.NestedSlice(got.Object, "spec", "rules")
	set, _, _ := unstructured.NestedSlice(rules[0].(map[string]any), "filters")
	if len(hosts) != 1 || hosts[0] != s.Host || len(parents) != 1 || len(set) != 1 ||
		got.GetLabels()[ForLabel] != s.Intercept || got.GetAnnotations()[OwnerAnnot] != s.Owner {
		t.Errorf("the preview route: %v", got.Object)
	}
	// Another intercept's preview beside it: the Service's own route is
	// still the one found.
	s2 := s
	s2.Intercept, s2.Host, s2.Value = "web-http-bob", "web-http-bob.preview.example", "bob"
	if _, _, err := Open(t.Context(), dyn, s2); err != nil {
		t.Errorf("a second preview: %v", err)
	}
	if urls := List(t.Context(), dyn, "shop"); len(urls) != 2 || urls["web-http-bob"] != "http://web-http-bob.preview.example/" {
		t.Errorf("List = %v", urls)
	}
	if err := Close(t.Context(), dyn, "shop", s.Intercept); err != nil {
		t.Fatal(err)
	}
	if err := Close(t.Context(), dyn, "shop", s.Intercept); err != nil {
		t.Errorf("closing a closed preview: %v", err)
	}
	if _, err := dyn.Resource(httpRouteGVR).Namespace("shop").Get(t.Context(), "web", metav1.GetOptions{}); err != nil {
		t.Errorf("the Service's route: %v", err)
	}
}

// A route of the preview's name that is not tunnel's preview of that
// intercept is never deleted.
func TestCloseLeavesOthersRoutes(t *testing.T) {
	dyn := fakeDyn(route("web", nil, "web"), route("tunnel-preview-x", map[string]any{ManagedBy: "someone"}, "web"))
	if err := Close(t.Context(), dyn, "shop", "x"); err == nil || !strings.Contains(err.Error(), "not tunnel's preview") {
		t.Errorf("Close of another's route: %v", err)
	}
	if _, err := dyn.Resource(httpRouteGVR).Namespace("shop").Get(t.Context(), "tunnel-preview-x", metav1.GetOptions{}); err != nil {
		t.Errorf("another's route was deleted: %v", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	dyn := fakeDyn(route("web", nil, "web"))
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{Namespace: "shop", Service: "web", Intercept: "i", Host: "Bad_Host", Header: "x-tunnel-a", Value: "1"}, "not a DNS name"},
		{Spec{Namespace: "shop", Service: "web", Intercept: "i", Host: "ok.example"}, "personal intercept"},
		{Spec{Namespace: "shop", Service: "api", Intercept: "i", Host: "ok.example", Header: "x-tunnel-a", Value: "1"}, "no gateway route"},
		{Spec{Namespace: "shop", Service: "web", Intercept: "i", Host: "shop.example", Header: "x-tunnel-a", Value: "1"}, "httproute/web already serves host shop.example"},
		{Spec{Namespace: "shop", Service: "web", Intercept: "i", Host: "www.prod.example", Domain: "preview.example", Header: "x-tunnel-a", Value: "1"}, "not under the preview domain"},
	} {
		if _, _, err := Open(t.Context(), dyn, tc.s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%+v) = %v, want %q", tc.s, err, tc.want)
		}
	}
}

// A gateway that refuses the route (its listeners do not cover the host)
// makes the preview fail with its reason.
func TestAcceptedReadsTheGatewaysWord(t *testing.T) {
	refused := route("tunnel-preview-i", nil, "web")
	_ = unstructured.SetNestedSlice(refused.Object, []any{map[string]any{"conditions": []any{map[string]any{
		"type": "Accepted", "status": "False", "reason": "NoMatchingListenerHostname", "message": "no listener for x.example"}}}}, "status", "parents")
	ok := route("ok", nil, "web")
	_ = unstructured.SetNestedSlice(ok.Object, []any{map[string]any{"conditions": []any{map[string]any{"type": "Accepted", "status": "True"}}}}, "status", "parents")
	res := fakeDyn(refused, ok).Resource(httpRouteGVR).Namespace("shop")
	if err := accepted(t.Context(), res, "tunnel-preview-i", time.Second); err == nil || !strings.Contains(err.Error(), "NoMatchingListenerHostname") {
		t.Errorf("a refused route: %v", err)
	}
	if err := accepted(t.Context(), res, "ok", time.Second); err != nil {
		t.Errorf("an accepted route: %v", err)
	}
}

// A route an older version named by the first 48 characters of a long
// intercept name is still closed; one of that name that is another
// intercept's is left alone.
func TestCloseFindsARouteOfTheOldName(t *testing.T) {
	long := strings.Repeat("checkout-frontend-", 3) + "alice"
	old := "tunnel-preview-" + label(long, 48)
	dyn := fakeDyn(route(old, map[string]any{ManagedBy: "tunnel", ForLabel: label(long, 63)}, "web"))
	if err := Close(t.Context(), dyn, "shop", long); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(httpRouteGVR).Namespace("shop").Get(t.Context(), old, metav1.GetOptions{}); err == nil {
		t.Error("the route of the old name is still there")
	}
	other := strings.Repeat("checkout-frontend-", 3) + "bob"
	dyn = fakeDyn(route(old, map[string]any{ManagedBy: "tunnel", ForLabel: label(long, 63)}, "web"))
	if err := Close(t.Context(), dyn, "shop", other); err != nil {
		t.Errorf("closing another intercept of a name alike: %v", err)
	}
	if _, err := dyn.Resource(httpRouteGVR).Namespace("shop").Get(t.Context(), old, metav1.GetOptions{}); err != nil {
		t.Errorf("another intercept's route went: %v", err)
	}
}
