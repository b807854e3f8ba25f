//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/integration/lab"
)

// A dark launch through the real gateway, with two cohorts of load: the
// one that carries the match reaches the canary every time, the other
// never, until the weighted step after it; a cookie's dark launch of a
// failing release is rolled back. The route, with several rules, a
// redirect, a header filter and timeouts, is byte for byte as before
// after each; a match the route cannot carry is refused before anything
// is created.
func TestCanaryDarkLaunch(t *testing.T) {
	c := newCanaryLab(t)
	c.apply(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: %[1]s, annotations: {team: checkout}, labels: {app: echo}}
spec:
  parentRefs: [{name: %[2]s, namespace: %[3]s}]
  hostnames: [%[4]s]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /tenant}, headers: [{name: x-tenant, value: acme}]}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-from, value: gateway}]}
    backendRefs: [{name: echo, port: 80, weight: 2}]
    timeouts: {request: 20s}
`, c.ns, lab.GatewayName, lab.GatewayNamespace, c.host))
	before := c.routeJSON()

	t.Run("refused before anything is made", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--match", "header:x-tenant=beta"}, "rule 2 of httproute " + c.ns + "/echo already matches header x-tenant, so it cannot also pick requests with header x-tenant=beta"},
			{[]string{"--match", "header:x-beta=~(1"}, "is not a regular expression"},
			{[]string{"--match", "query:beta=1"}, "want header:NAME=VALUE or cookie:NAME=VALUE"},
			{[]string{"--steps", "match,50"}, "the match step needs --match"},
		} {
			args := append(c.canaryArgs(lab.EchoImage), tc.args...)
			out, err := c.laptop.run(args...)
			if err == nil || !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Errorf("tunnel %s: want one line saying %q, got %v\n%s", strings.Join(args, " "), tc.want, err, out)
			}
		}
		if _, err := c.tryState(); err == nil {
			t.Error("a refused dark launch left its record")
		}
		if _, err := h.Client.AppsV1().Deployments(c.ns).Get(context.Background(), "echo-canary", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("a refused dark launch made its deployment (%v)", err)
		}
		if after := c.routeJSON(); after != before {
			t.Errorf("a refused dark launch changed the route:\n%s\nwas\n%s", after, before)
		}
	})

	t.Run("cookie, failing, rolled back", func(t *testing.T) {
		bad := c.image("fail50", "FAIL_RATE=0.5")
		beta, others := c.startLoad(20, "Cookie: theme=dark; beta=yes"), c.startLoad(20, "Cookie: beta=no")
		out, err := c.laptop.run(c.canaryArgs(bad, "--match", "cookie:beta=~(1|yes)", "--steps", "match")...)
		if err == nil || !strings.Contains(out, "rolled back: error rate") {
			t.Fatalf("canary start: want a rollback on the error rate, got %v\n%s", err, out)
		}
		st := c.state()
		rec := st.Steps[0]
		betaAnswers, otherAnswers := beta.stop(), others.stop()
		// The failing release's 500s name no pod; only the canary fails.
		all, toCanary, failed := between(betaAnswers, rec.Started.Add(2*time.Second), *rec.Ended)
		t.Logf("%d of %d requests with the cookie reached the canary, %d of them failed", toCanary+failed, all, failed)
		if all < 50 || toCanary+failed != all {
			t.Errorf("%d of %d requests with the cookie reached the canary, want every one", toCanary+failed, all)
		}
		all, toCanary, failed = between(otherAnswers, rec.Started, time.Now())
		if all < 50 || toCanary > 0 || failed > 0 {
			t.Errorf("%d of %d requests without the cookie reached the canary and %d failed, want none", toCanary, all, failed)
		}
		if after := c.routeJSON(); after != before {
			t.Errorf("the route after the rollback:\n%s\nwas\n%s", after, before)
		}
		c.checkRemoved(lab.EchoImage)
	})
	t.Run("header, then weighted, promoted", func(t *testing.T) {
		v2 := c.image("v2")
		beta, others := c.startLoad(20, "x-beta: 1"), c.startLoad(20)
		// The business check holds (both take every order): it does not stop a good release.
		out, err := c.laptop.run(c.canaryArgs(v2, "--match", "header:x-beta=1", "--steps", "match,50", "--check", conversionCheck)...)
		if err != nil || !strings.Contains(out, "The canary of echo is promoted") {
			t.Fatalf("canary start: %v\n%s", err, out)
		}
		st := c.state()
		if st.Phase != canary.Promoted || len(st.Steps) != 2 || st.Steps[0].Weight != canary.MatchStep {
			t.Fatalf("state %s after steps %+v, want Promoted after the match step and 50%%", st.Phase, st.Steps)
		}
		betaAnswers, otherAnswers := beta.stop(), others.stop()
		for i, rec := range st.Steps {
			// The gateway takes a route change within a second or so.
			from := rec.Started.Add(2 * time.Second)
			all, toCanary, failed := between(betaAnswers, from, *rec.Ended)
			t.Logf("step %d: %d of %d requests with the header reached the canary", i+1, toCanary, all)
			if all < 50 || toCanary != all || failed > 0 {
				t.Errorf("step %d: %d of %d requests with the header reached the canary (%d failed), want every one", i+1, toCanary, all, failed)
			}
			all, toCanary, failed = between(otherAnswers, from, *rec.Ended)
			share := 100 * float64(toCanary) / float64(max(all, 1))
			t.Logf("step %d: %d of %d requests without it (%.1f%%) reached the canary", i+1, toCanary, all, share)
			want := float64(rec.Weight)
			if all < 50 || failed > 0 || (want == 0 && toCanary > 0) || share < want-10 || share > want+10 {
				t.Errorf("step %d: %d of %d requests without the header reached the canary (%d failed), want %.0f%%", i+1, toCanary, all, failed, want)
			}
		}
		if after := c.routeJSON(); after != before {
			t.Errorf("the route after the promotion:\n%s\nwas\n%s", after, before)
		}
		c.checkRemoved(v2)
	})
}

// routeJSON is the route as its owner sees it: spec, labels, annotations.
func (c *canaryLab) routeJSON() string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := kubectl(ctx, node, "get", "httproute", "-n", c.ns, "echo", "-o", "json")
	if err != nil {
		c.t.Fatalf("get the route: %v\n%s", err, out)
	}
	var r struct {
		Metadata struct {
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		c.t.Fatal(err)
	}
	data, _ := json.Marshal(r)
	return string(data)
}
