package canary

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"
)

// A route as teams write them: several rules, matches, filters, timeouts,
// a rule of another Service's, a weight beside another backend.
const busyRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: ns
  annotations: {team: checkout}
spec:
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-tenant, value: acme}]
    - path: {type: Exact, value: /health}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-from, value: gateway}]}
    backendRefs: [{name: shop, port: 80, weight: 3}, {name: legacy, port: 80, weight: 1}]
    timeouts: {request: 5s}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /static}}]
    backendRefs: [{name: cdn, port: 80}]
  - backendRefs: [{name: shop, port: 80}]
`

func busy(t *testing.T) (*dynfake.FakeDynamicClient, Router, string) {
	t.Helper()
	obj := parseRoute(t)
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"}, obj)
	r, err := FindRouter(context.Background(), dyn, Backends{Namespace: "ns", Stable: "shop", Canary: "shop-canary"}, "")
	if err != nil {
		t.Fatal(err)
	}
	return dyn, r, routeJSON(t, dyn)
}

// parseRoute reads busyRoute as the API server's clients do: numbers as int64.
func parseRoute(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	data, err := yaml.YAMLToJSON([]byte(busyRoute))
	if err != nil {
		t.Fatal(err)
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		t.Fatal(err)
	}
	return &obj
}

// routeJSON is what a user's own edits would see of the route.
func routeJSON(t *testing.T, dyn *dynfake.FakeDynamicClient) string {
	t.Helper()
	obj, err := dyn.Resource(httpRouteGVR).Namespace("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(map[string]any{"spec": obj.Object["spec"], "annotations": obj.GetAnnotations(), "labels": obj.GetLabels()})
	return string(data)
}

func rulesOf(t *testing.T, dyn *dynfake.FakeDynamicClient) []map[string]any {
	t.Helper()
	obj, _ := dyn.Resource(httpRouteGVR).Namespace("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
	var out []map[string]any
	for _, r := range rules {
		out = append(out, asMap(r))
	}
	return out
}

func TestDarkLaunchKeepsEveryOtherRuleByteForByte(t *testing.T) {
	ctx := context.Background()
	dyn, r, before := busy(t)
	m, err := ParseMatch("header:x-beta=1")
	if err != nil {
		t.Fatal(err)
	}
	// The match step: the two rules to shop get a copy each, at the end.
	if err := r.Split(ctx, Split{Match: m}); err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, dyn)
	if len(rules) != 6 {
		t.Fatalf("%d rules at the match step, want the 4 and 2 copies", len(rules))
	}
	for i := range 4 {
		want, _, _ := unstructured.NestedSlice(parseRoute(t).Object, "spec", "rules")
		if jsonOf(rules[i]) != jsonOf(want[i]) {
			t.Errorf("rule %d changed at the match step:\n%s\nwas\n%s", i+1, jsonOf(rules[i]), jsonOf(want[i]))
		}
	}
	api := jsonOf(rules[4])
	for _, want := range []string{
		`{"headers":[{"name":"x-tenant","value":"acme"},{"name":"x-beta","value":"1"}],"path":{"type":"PathPrefix","value":"/api"}}`,
		`{"headers":[{"name":"x-beta","value":"1"}],"path":{"type":"Exact","value":"/health"}}`,
		`"backendRefs":[{"name":"shop-canary","port":80,"weight":3},{"name":"legacy","port":80,"weight":1}]`,
		`"timeouts":{"request":"5s"}`, `"x-from"`,
	} {
		if !strings.Contains(api, want) {
			t.Errorf("the copy of rule 1 lacks %s:\n%s", want, api)
		}
	}
	if got, want := jsonOf(rules[5]), `{"backendRefs":[{"name":"shop-canary","port":80}],"matches":[{"headers":[{"name":"x-beta","value":"1"}]}]}`; got != want {
		t.Errorf("the copy of rule 4: %s, want %s", got, want)
	}
	// Weighted steps keep the match; the copies are not weighed.
	for _, w := range []int{10, 50, 100} {
		if err := r.Split(ctx, Split{Weight: w, Match: m}); err != nil {
			t.Fatal(err)
		}
	}
	rules = rulesOf(t, dyn)
	if len(rules) != 6 || !strings.Contains(jsonOf(rules[0]), `[{"name":"shop","port":80,"weight":0},{"name":"legacy","port":80,"weight":1},{"name":"shop-canary","port":80,"weight":300}]`) ||
		jsonOf(rules[4]) != api {
		t.Errorf("at 100%% with the match:\n%s\n%s", jsonOf(rules[0]), jsonOf(rules[4]))
	}
	// All back to stable, then out: the route is as it was.
	if err := r.Split(ctx, Split{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if after := routeJSON(t, dyn); after != before {
		t.Errorf("the route after the canary:\n%s\nwas\n%s", after, before)
	}
}

func TestDarkLaunchRefusesWhatTheRouteCannotSay(t *testing.T) {
	ctx := context.Background()
	dyn, r, before := busy(t)
	m, _ := ParseMatch("header:X-Tenant=beta")
	err := r.Split(ctx, Split{Match: m})
	if err == nil || !strings.Contains(err.Error(), "rule 1 of httproute ns/shop already matches header x-tenant") {
		t.Errorf("a match on a header the rule matches already: %v", err)
	}
	// A named rule: a policy attached by its name would not cover the copy.
	obj, _ := dyn.Resource(httpRouteGVR).Namespace("ns").Get(ctx, "shop", metav1.GetOptions{})
	rules, _, _ := unstructured.NestedSlice(obj.Object, "spec", "rules")
	asMap(rules[3])["name"] = "main"
	_ = unstructured.SetNestedSlice(obj.Object, rules, "spec", "rules")
	if _, err := dyn.Resource(httpRouteGVR).Namespace("ns").Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	named := routeJSON(t, dyn)
	m, _ = ParseMatch("header:x-beta=1")
	err = r.Split(ctx, Split{Match: m})
	if err == nil || !strings.Contains(err.Error(), "rule 4 of httproute ns/shop is named main") {
		t.Errorf("a match on a named rule: %v", err)
	}
	if after := routeJSON(t, dyn); after != named || named == before {
		t.Errorf("a refused split changed the route:\n%s\nwas\n%s", after, named)
	}
}

func TestParseMatch(t *testing.T) {
	for in, want := range map[string]string{
		"header:x-beta=1":        "requests with header x-beta=1",
		"cookie:beta=yes":        "requests with cookie beta=yes",
		"header:x-user=~.*@a.io": "requests with header x-user matching .*@a.io",
		"cookie:group=~(a|b)":    "requests with cookie group matching (a|b)",
	} {
		m, err := ParseMatch(in)
		if err != nil || m.Describe() != want || m.String() != in {
			t.Errorf("ParseMatch(%q) = %v (%v), want %q", in, m, err, want)
		}
	}
	for in, want := range map[string]string{
		"query:a=1":                        "want header:NAME=VALUE",
		"header:x-beta":                    "want header:NAME=VALUE",
		"header:x beta=1":                  `"x beta" is not a header name`,
		"header:x-beta=":                   "value is empty",
		"header:x-beta=~(a":                "is not a regular expression",
		"cookie:beta=a;b=1":                "is not a cookie value",
		"header:cookie=a":                  "not the Cookie header",
		"header:x-beta=1`)||PathPrefix(`/": "or a backtick",
		"header:x-beta=a\x1b[2J":           "other than printable ASCII",
		"header:x-beta=~.*":                "matches an empty value",
		"cookie:beta=~^1$":                 "leave out ^ and $",
		"header:User-Agent=curl":           "comes with every request",
	} {
		if _, err := ParseMatch(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMatch(%q): %v, want %q", in, err, want)
		}
	}
}

// The expressions mean the same matched as a whole (Envoy) or anywhere
// (Traefik): both readings are tried.
func TestMatchHeaderExpressions(t *testing.T) {
	for _, tc := range []struct {
		match string
		yes   []string
		no    []string
	}{
		{"cookie:beta=1", []string{"beta=1", "a=2; beta=1", "beta=1; a=2", "a=2;beta=1;c=3"}, []string{"beta=12", "xbeta=1", "a=beta=1", "beta=0; b=1", ""}},
		{"cookie:beta=~(1|yes)", []string{"beta=yes", "x=1; beta=1"}, []string{"beta=no", "beta=yes2"}},
		{"header:x-user=~[a-z]+@a\\.io", []string{"ann@a.io"}, []string{"ann@a.io.evil", "x ann@a.io"}},
	} {
		m, err := ParseMatch(tc.match)
		if err != nil {
			t.Fatal(err)
		}
		_, expr, regex := m.Header()
		if !regex {
			t.Fatalf("%s: not an expression", tc.match)
		}
		anywhere := regexp.MustCompile(expr)
		whole := regexp.MustCompile(`^(?:` + expr + `)$`)
		for _, v := range tc.yes {
			if !anywhere.MatchString(v) || !whole.MatchString(v) {
				t.Errorf("%s (%s) misses %q", tc.match, expr, v)
			}
		}
		for _, v := range tc.no {
			if anywhere.MatchString(v) || whole.MatchString(v) {
				t.Errorf("%s (%s) takes %q", tc.match, expr, v)
			}
		}
	}
}

func TestParseStepsWithMatch(t *testing.T) {
	if s, err := ParseSteps("match,10,50,100"); err != nil || jsonOf(s) != "[0,10,50,100]" {
		t.Errorf("match,10,50,100: %v %v", s, err)
	}
	if _, err := ParseSteps("10,match"); err == nil || !strings.Contains(err.Error(), "match can only be the first step") {
		t.Errorf("10,match: %v", err)
	}
}
