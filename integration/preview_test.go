//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var httpRoutes = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}

// A pair opens a personal intercept by URL: a second laptop sends the
// preview URL's requests through the lab's gateway and gets the first
// laptop's answer, and the Service's own host name still gets the
// cluster's. leave takes the route away (the URL answers 404) and leaves
// the Service's own route exactly as it was; a crashed laptop's preview is
// taken away at its next connect.
func TestPreviewURLThroughTheGateway(t *testing.T) {
	cl := newCanaryLab(t) // the gateway, echo behind it, its own HTTPRoute
	ns, l := cl.ns, cl.laptop
	ctx := context.Background()
	installManager(t, "--preview-domain", "preview.lab.test")
	l.must("connect", "-n", ns)
	routeBefore := routeState(t, ns, "echo")
	startLocalServer(t, l, "laptop-preview", 7075)

	out := l.must("intercept", "echo", "--port", "7075:http", "--http-header", "auto", "--preview")
	m := regexp.MustCompile(`Preview URL: http://([a-z0-9.-]+)/`).FindStringSubmatch(out)
	if m == nil || !strings.HasSuffix(m[1], ".preview.lab.test") || !strings.Contains(m[1], ns) {
		t.Fatalf("intercept --preview prints no URL under the install's domain:\n%s", out)
	}
	host := m[1]
	partner := newLaptop(t, "partner", "admin")
	partner.must("connect", "-n", ns)
	open := func(h string) string {
		o, _ := partner.sh(fmt.Sprintf("curl -sS --max-time 5 -o /dev/stdout -w ' code=%%{http_code}' --resolve %s:80:%s http://%s/pr", h, cl.gw, h))
		return o
	}
	eventually(t, 30*time.Second, "the preview URL answers from the laptop", func() (bool, string) {
		o := open(host)
		return strings.Contains(o, "pod=laptop-preview"), o
	})
	if o := open(cl.host); !strings.Contains(o, "pod=echo-") {
		t.Errorf("the Service's own host through the gateway: %s", o)
	}
	w := list(t, l, ns)["echo"]
	if len(w.Intercepts) != 1 || w.Intercepts[0].PreviewURL != "http://"+host+"/" {
		t.Fatalf("list shows the intercepts as %+v, want the preview URL", w.Intercepts)
	}
	intercept := w.Intercepts[0].Name
	route, err := h.Dynamic.Resource(httpRoutes).Namespace(ns).Get(ctx, "tunnel-preview-"+intercept, metav1.GetOptions{})
	if err != nil || route.GetLabels()["tunnel.dev/preview-for"] != intercept || route.GetAnnotations()["tunnel.dev/preview-owner"] == "" {
		t.Errorf("the preview route does not carry tunnel's label and its owner: %v %v", err, route)
	}

	l.must("leave", intercept)
	eventually(t, 30*time.Second, "the preview URL answers 404 after leave", func() (bool, string) {
		o := open(host)
		return strings.Contains(o, "code=404"), o
	})
	if after := routeState(t, ns, "echo"); after != routeBefore {
		t.Errorf("the Service's own route changed:\nbefore:\n%s\nafter:\n%s", routeBefore, after)
	}
	t.Logf("preview %s of intercept %s opened and closed", host, intercept)

	// A laptop that dies leaves its route written down; its next
	// connect takes it away.
	out = l.must("intercept", "echo", "--port", "7075:http", "--http-header", "x-tunnel-pair=1", "--preview-host", "pair."+ns+".preview.lab.test")
	if !strings.Contains(out, "Preview URL: http://pair."+ns+".preview.lab.test/") {
		t.Fatalf("intercept --preview-host:\n%s", out)
	}
	if out, err := l.sh(`kill -9 $(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock)`); err != nil {
		t.Fatalf("kill -9 the daemon: %v\n%s", err, out)
	}
	out = l.must("connect", "-n", ns)
	if !strings.Contains(out, "Took away the preview route of intercept") {
		t.Errorf("connect after the crash says:\n%s", out)
	}
	list, err := h.Dynamic.Resource(httpRoutes).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: "tunnel.dev/preview-for"})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("preview routes left after the crash's repair: %v %d", err, len(list.Items))
	}
	if after := routeState(t, ns, "echo"); after != routeBefore {
		t.Errorf("the Service's own route changed:\nbefore:\n%s\nafter:\n%s", routeBefore, after)
	}
}

// routeState is an HTTPRoute as its owner wrote it: spec, labels and
// annotations (its status is the gateway's).
func routeState(t *testing.T, ns, name string) string {
	t.Helper()
	r, err := h.Dynamic.Resource(httpRoutes).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.MarshalIndent(map[string]any{"spec": r.Object["spec"], "labels": r.GetLabels(), "annotations": r.GetAnnotations()}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
