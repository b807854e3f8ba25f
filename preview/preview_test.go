package preview

import (
	"strings"
	"testing"

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
	for in, want := range map[string]string{
		"echo-http-Alice_laptop": "echo-http-alice-laptop.preview.example",
		"-x-":                    "x.preview.example",
		strings.Repeat("a", 70):  strings.Repeat("a", 63) + ".preview.example",
	} {
		if got := Host(in, "preview.example."); got != want {
			t.Errorf("Host(%q) = %q, want %q", in, got, want)
		}
	}
}

// The preview route is one of its own beside the Service's: the same
// parents, the intercept's host, the header set, the Service's port; the
// Service's route is not touched, and a second preview still finds it.
func TestOpenAndClose(t *testing.T) {
	dyn := fakeDyn(route("web", nil, "web"))
	s := Spec{Namespace: "shop", Service: "web", Intercept: "web-http-alice", Owner: "alice@laptop", Host: "web-http-alice.preview.example",
		Header: "x-tunnel-dev", Value: "alice"}
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
	} {
		if _, _, err := Open(t.Context(), dyn, tc.s); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%+v) = %v, want %q", tc.s, err, tc.want)
		}
	}
}
