package canary

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
)

func route(rules ...any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "shop", "namespace": "ns"},
		"spec":     map[string]any{"rules": rules},
	}}
}

func rule(refs ...map[string]any) any {
	list := make([]any, len(refs))
	for i, r := range refs {
		list[i] = r
	}
	return map[string]any{"backendRefs": list}
}

func ref(name string, weight ...int64) map[string]any {
	m := map[string]any{"name": name, "port": int64(80)}
	if len(weight) > 0 {
		m["weight"] = weight[0]
	}
	return m
}

func backendsOf(t *testing.T, dyn *dynfake.FakeDynamicClient) string {
	t.Helper()
	obj, err := dyn.Resource(httpRouteGVR).Namespace("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
	var out []string
	for _, r := range rules {
		refs, _, _ := unstructured.NestedSlice(asMap(r), "backendRefs")
		var rs []string
		for _, x := range refs {
			m := asMap(x)
			w, ok := m["weight"]
			if !ok {
				w = "-"
			}
			rs = append(rs, m["name"].(string)+"="+strings.TrimSpace(strings.Trim(jsonOf(w), `"`)))
		}
		out = append(out, strings.Join(rs, ","))
	}
	if _, ok := obj.GetAnnotations()[weightsAnnotation]; ok {
		out = append(out, "annotated")
	}
	return strings.Join(out, " | ")
}

func jsonOf(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestHTTPRouteWeightsAndRemoveRestoresTheRoute(t *testing.T) {
	for _, tc := range []struct {
		name   string
		route  *unstructured.Unstructured
		at20   string
		at50   string
		before string
	}{
		{
			name:   "no weight",
			route:  route(rule(ref("shop")), rule(ref("other"))),
			at20:   "shop=80,shop-canary=20 | other=- | annotated",
			at50:   "shop=50,shop-canary=50 | other=- | annotated",
			before: "shop=- | other=-",
		},
		{
			name:   "a weight beside another backend",
			route:  route(rule(ref("shop", 3), ref("legacy", 1))),
			at20:   "shop=240,legacy=1,shop-canary=60 | annotated",
			at50:   "shop=150,legacy=1,shop-canary=150 | annotated",
			before: "shop=3,legacy=1",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
				map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"}, tc.route)
			b := Backends{Namespace: "ns", Stable: "shop", Canary: "shop-canary"}
			r, err := FindRouter(ctx, dyn, b, "")
			if err != nil {
				t.Fatal(err)
			}
			if r.Ref() != "httproute/shop" || r.Port() != 80 {
				t.Fatalf("router %s port %d", r.Ref(), r.Port())
			}
			if err := r.Split(ctx, Split{Weight: 20}); err != nil {
				t.Fatal(err)
			}
			if got := backendsOf(t, dyn); got != tc.at20 {
				t.Errorf("at 20%%: %s, want %s", got, tc.at20)
			}
			if err := r.Split(ctx, Split{Weight: 50}); err != nil {
				t.Fatal(err)
			}
			if got := backendsOf(t, dyn); got != tc.at50 {
				t.Errorf("at 50%%: %s, want %s", got, tc.at50)
			}
			// A second CLI (resume) removes it from the record alone.
			r2, _ := OpenRouter(dyn, b, r.Ref())
			if err := r2.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			if got := backendsOf(t, dyn); got != tc.before {
				t.Errorf("after Remove: %s, want it as before: %s", got, tc.before)
			}
		})
	}
}

func TestFindRouterNamesWhatIsMissingOrAmbiguous(t *testing.T) {
	ctx := context.Background()
	b := Backends{Namespace: "ns", Stable: "shop", Canary: "shop-canary"}
	other := route(rule(ref("other")))
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"}, other)
	if _, err := FindRouter(ctx, dyn, b, ""); err == nil || !strings.Contains(err.Error(), "no HTTPRoute or Emissary Mapping in namespace ns sends traffic to service shop") {
		t.Errorf("no route: %v", err)
	}
	if _, err := FindRouter(ctx, dyn, b, "shop"); err == nil || !strings.Contains(err.Error(), "sends no traffic to service shop") {
		t.Errorf("a route that does not send to the service: %v", err)
	}
	if _, err := FindRouter(ctx, dyn, b, "ingress/shop"); err == nil || !strings.Contains(err.Error(), "unknown kind") {
		t.Errorf("an unknown kind: %v", err)
	}
}

func TestMappingService(t *testing.T) {
	for in, want := range map[string][4]string{
		"shop":                             {"", "shop", "", ""},
		"shop:8080":                        {"", "shop", "", ":8080"},
		"https://shop.ns:443":              {"https://", "shop", ".ns", ":443"},
		"shop.ns.svc.cluster.local:80":     {"", "shop", ".ns.svc.cluster.local", ":80"},
		"http://shop.ns.svc.cluster.local": {"http://", "shop", ".ns.svc.cluster.local", ""},
	} {
		s, n, r, p := mappingService(in)
		if got := [4]string{s, n, r, p}; got != want {
			t.Errorf("mappingService(%q) = %q, want %q", in, got, want)
		}
	}
	b := Backends{Namespace: "ns", Stable: "shop"}
	for svc, want := range map[string]bool{"shop": true, "shop.ns:80": true, "shop.other:80": false, "shopping": false} {
		if got := mappingTargets(map[string]any{"spec": map[string]any{"service": svc}}, b); got != want {
			t.Errorf("mappingTargets(%q) = %v, want %v", svc, got, want)
		}
	}
}

func TestSelectorsTellStableFromCanary(t *testing.T) {
	traefik := Dialects["traefik"].Selector
	match := func(sel, value string) bool {
		re := regexp.MustCompile(`^` + strings.TrimSuffix(sel[strings.Index(sel, `"`)+1:], `"`) + `$`)
		return re.MatchString(value)
	}
	stable, canary := traefik("shop", "echo", 80), traefik("shop", "echo-canary", 80)
	if !match(stable, "shop-echo-http-80@kubernetesgateway") || match(stable, "shop-echo-canary-http-80@kubernetesgateway") {
		t.Errorf("traefik stable selector %s", stable)
	}
	if !match(canary, "shop-echo-canary-http-80@kubernetesgateway") || match(canary, "shop-echo-http-80@kubernetesgateway") {
		t.Errorf("traefik canary selector %s", canary)
	}
	emissary := Dialects["emissary"].Selector("shop", "echo-canary", 80)
	for _, name := range []string{"echo_canary_shop_80", "echo_canary", "cluster_echo_canary_shop_80_shop"} {
		if !match(emissary, name) {
			t.Errorf("emissary selector %s misses %s", emissary, name)
		}
	}
	if match(Dialects["emissary"].Selector("shop", "echo", 80), "echo_canary_shop_80") {
		t.Error("the emissary stable selector takes the canary's cluster")
	}
}

func TestJudge(t *testing.T) {
	spec := Spec{Interval: Duration(30 * time.Second), MaxErrorRate: 0.01, MaxP99: Duration(500 * time.Millisecond), MinRequests: 20}
	for _, tc := range []struct {
		canary     Sample
		want       string
		wantEnough bool
	}{
		{Sample{Requests: 5}, "too few requests to judge: 5 in 30s, want at least 20", false},
		{Sample{Requests: 100, ErrorRate: 0.2, P99: time.Millisecond}, "error rate 20% over 30s is above 1% (stable: 0.5%)", true},
		{Sample{Requests: 100, P99: 700 * time.Millisecond}, "p99 latency 700ms over 30s is above 500ms (stable: 12ms)", true},
		{Sample{Requests: 100, ErrorRate: 0.01, P99: 500 * time.Millisecond}, "", true},
	} {
		got, enough := Judge(spec, tc.canary, Sample{Requests: 400, ErrorRate: 0.005, P99: 12 * time.Millisecond})
		if got != tc.want || enough != tc.wantEnough {
			t.Errorf("Judge(%+v) = %q, %v; want %q, %v", tc.canary, got, enough, tc.want, tc.wantEnough)
		}
	}
}

func TestParseSteps(t *testing.T) {
	if s, err := ParseSteps("5, 25%,50,100"); err != nil || jsonOf(s) != "[5,25,50,100]" {
		t.Errorf("ParseSteps = %v, %v", s, err)
	}
	for _, bad := range []string{"", "0", "50,25", "5,101", "ten"} {
		if _, err := ParseSteps(bad); err == nil {
			t.Errorf("ParseSteps(%q) took it", bad)
		}
	}
}

func TestCanaryPodsAreNotTheStableServices(t *testing.T) {
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "shop"}}}
	d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "shop", "tier": "web"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "shop", "tier": "web", "team": "a"}}},
	}}
	pod, sel := canaryLabels(svc, d, "shop-canary")
	if jsonOf(pod) != `{"team":"a","tunnel.dev/canary":"shop-canary","tunnel.dev/track":"canary"}` || len(sel) != 2 {
		t.Errorf("canary pod labels %v, selector %v", pod, sel)
	}
}

func TestStoreKeepsOneLiveCanaryAndEveryRequest(t *testing.T) {
	ctx := context.Background()
	s := Store{CS: fake.NewClientset(), Namespace: "ns"}
	st := &State{Spec: Spec{Service: "shop", Steps: []int{10, 100}}, Canary: "shop-canary", Phase: Progressing}
	if err := s.Create(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, st); err == nil || !strings.Contains(err.Error(), "a canary of shop is already progressing with 10% of traffic") {
		t.Errorf("a second canary of a live one: %v", err)
	}
	if err := s.Update(ctx, "shop", func(st *State) error { st.Request = "abort"; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "shop")
	if err != nil || got.Request != "abort" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if err := s.Update(ctx, "shop", func(st *State) error { st.Phase = RolledBack; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, st); err != nil {
		t.Errorf("a new canary after one ended: %v", err)
	}
	if _, err := s.Get(ctx, "cart"); err == nil || !strings.Contains(err.Error(), "no canary for service cart in namespace ns") {
		t.Errorf("Get of an unknown canary: %v", err)
	}
}

func TestDriverHolds(t *testing.T) {
	now := time.Now()
	if (&Driver{Host: "a", PID: 1, Renewed: now.Add(-LeaseTTL - time.Second)}).Holds(now, "b") {
		t.Error("a lapsed lease holds")
	}
	if !(&Driver{Host: "a", PID: 1, Renewed: now}).Holds(now, "b") {
		t.Error("a fresh lease from another host does not hold")
	}
	if (&Driver{Host: "me", PID: 1 << 22, Renewed: now}).Holds(now, "me") {
		t.Error("the fresh lease of a dead process on this host holds")
	}
}

func TestFreeRefusesSomeoneElsesName(t *testing.T) {
	ctx := context.Background()
	mine := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "shop-canary", Namespace: "ns", Labels: map[string]string{Label: "shop"}}}
	theirs := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cart-canary", Namespace: "ns"}}
	w := Workloads{CS: fake.NewClientset(mine, theirs), Namespace: "ns"}
	if err := w.Free(ctx, "shop-canary", "shop"); err != nil {
		t.Errorf("a canary's own leftover: %v", err)
	}
	if err := w.Free(ctx, "cart-canary", "cart"); err == nil || !strings.Contains(err.Error(), "service ns/cart-canary exists and is not a canary of cart") {
		t.Errorf("someone else's service: %v", err)
	}
	if err := w.Free(ctx, "new-canary", "new"); err != nil {
		t.Errorf("a free name: %v", err)
	}
}

// Taking traffic back from a canary that never got any (it did not start)
// leaves the route untouched: no canary backend, no annotation.
func TestSplitNothingOnARouteWithoutTheCanary(t *testing.T) {
	ctx := context.Background()
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"}, route(rule(ref("shop", 3))))
	r, _ := OpenRouter(dyn, Backends{Namespace: "ns", Stable: "shop", Canary: "shop-canary"}, "httproute/shop")
	if err := r.Split(ctx, Split{}); err != nil {
		t.Fatal(err)
	}
	if got := backendsOf(t, dyn); got != "shop=3" {
		t.Errorf("route after Split{}: %s, want it untouched", got)
	}
}
