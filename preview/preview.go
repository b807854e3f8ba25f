// Package preview opens a personal intercept by URL: a route of the
// cluster's gateway, beside the one that sends the Service its traffic,
// that matches a host name of the intercept's own and adds the intercept's
// header before the request reaches the Service. Anyone who can reach the
// gateway opens the laptop's version by that URL; everyone else still gets
// the cluster's. The route is an object of its own (an HTTPRoute with the
// same parents as the Service's, or an Emissary Mapping with the same
// ambassador_id), so the gateway's own objects never change, and taking
// the preview away is deleting it.
package preview

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"

	"tunnel.dev/tunnel/canary"
)

// Labels and annotations on a preview route.
const (
	ManagedBy  = "app.kubernetes.io/managed-by"
	ForLabel   = "tunnel.dev/preview-for"   // the intercept's name
	OwnerAnnot = "tunnel.dev/preview-owner" // user@host of the intercept
)

// ErrNotOurs: a route of a preview's name is not tunnel's preview of
// that intercept, so it is left alone.
var ErrNotOurs = errors.New("not a preview of tunnel's")

var (
	httpRouteGVR = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	mappingGVR   = schema.GroupVersionResource{Group: "getambassador.io", Version: "v3alpha1", Resource: "mappings"}
)

// Spec is one preview.
type Spec struct {
	Namespace string
	Service   string // the intercepted Service
	Intercept string // its name, which names the route
	Owner     string // user@host
	Host      string // the host name it answers
	Header    string // the intercept's header and value
	Value     string
	Port      int32         // the Service port the intercept takes
	Domain    string        // the install's preview domain: Host must be under it ("" for any host no route names)
	Wait      time.Duration // for the gateway's word on the route (0: 10 s)
}

// Host is the default host name of an intercept's preview under domain:
// its name and namespace, and a random token, as one DNS label. The token
// makes the URL one nobody guesses (it opens the laptop's version to
// whoever has it), and the namespace keeps intercepts of one name in two
// namespaces apart.
func Host(intercept, ns, domain string) string {
	token := make([]byte, 3)
	_, _ = rand.Read(token)
	return label(intercept+"-"+ns, 56) + "-" + hex.EncodeToString(token) + "." + strings.Trim(domain, ".")
}

// label makes s a DNS label of at most n characters.
func label(s string, n int) string {
	l := strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, s), "-")
	if len(l) > n {
		l = strings.Trim(l[:n], "-")
	}
	return l
}

// RouteName is the preview route's name for an intercept, at most 63
// characters: a name too long to fit keeps its start and ends in a hash
// of the whole, so that two intercepts whose names begin alike get routes
// of their own.
func RouteName(intercept string) string {
	l := label(intercept, 63)
	if len(l) > 48 {
		sum := sha256.Sum256([]byte(intercept))
		l = strings.Trim(l[:39], "-") + "-" + hex.EncodeToString(sum[:4])
	}
	return "tunnel-preview-" + l
}

// routeNames are the names intercept's route may have: RouteName's, and
// for a long name the first 48 characters, as versions before the hash
// named it.
func routeNames(intercept string) []string {
	names := []string{RouteName(intercept)}
	if old := "tunnel-preview-" + label(intercept, 48); old != names[0] {
		names = append(names, old)
	}
	return names
}

// Open creates s's route beside the route (HTTPRoute or Emissary Mapping)
// that sends s.Service its traffic, and returns its ref (KIND/NAME) and
// URL. A preview route of this intercept there already is made again.
func Open(ctx context.Context, dyn dynamic.Interface, s Spec) (ref, url string, err error) {
	if errs := validation.IsDNS1123Subdomain(s.Host); len(errs) > 0 {
		return "", "", fmt.Errorf("preview host %q is not a DNS name: %s", s.Host, errs[0])
	}
	if s.Header == "" {
		return "", "", errors.New("a preview adds the intercept's header: it needs a personal intercept (--http-header)")
	}
	// Not a guard of rights (who may create routes beside the Service's
	// may write any), but of mistakes: a preview must not take a host
	// that serves something else.
	if d := strings.Trim(s.Domain, "."); d != "" && !strings.HasSuffix(s.Host, "."+d) {
		return "", "", fmt.Errorf("preview host %s is not under the preview domain the install set, %s", s.Host, d)
	}
	if other, err := routeNaming(ctx, dyn, s.Namespace, s.Host, RouteName(s.Intercept)); err != nil {
		return "", "", err
	} else if other != "" {
		return "", "", fmt.Errorf("%s already serves host %s: a preview takes a host of its own", other, s.Host)
	}
	router, err := canary.FindRouter(ctx, dyn, canary.Backends{Namespace: s.Namespace, Stable: s.Service}, "")
	if err != nil {
		return "", "", fmt.Errorf("no gateway route to preview through: %w", err)
	}
	kind, name, _ := strings.Cut(router.Ref(), "/")
	gvr := httpRouteGVR
	if kind == canary.KindMapping {
		gvr = mappingGVR
	}
	res := dyn.Resource(gvr).Namespace(s.Namespace)
	base, err := res.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("read %s: %w", router.Ref(), err)
	}
	port := s.Port
	if port == 0 {
		port = router.Port()
	}
	var obj *unstructured.Unstructured
	if kind == canary.KindMapping {
		obj = mapping(s, base, port)
	} else if obj = httpRoute(s, base, port); obj == nil {
		return "", "", fmt.Errorf("%s has no Gateway among its parents to preview through", router.Ref())
	}
	if err := Close(ctx, dyn, s.Namespace, s.Intercept); err != nil {
		return "", "", err
	}
	if _, err := res.Create(ctx, obj, metav1.CreateOptions{FieldManager: "tunnel-preview"}); err != nil {
		return "", "", fmt.Errorf("create the preview route: %w", err)
	}
	if kind != canary.KindMapping {
		wait := s.Wait
		if wait == 0 {
			wait = 10 * time.Second
		}
		if err := accepted(ctx, res, obj.GetName(), wait); err != nil {
			_ = Close(context.WithoutCancel(ctx), dyn, s.Namespace, s.Intercept)
			return "", "", err
		}
	}
	return kind + "/" + obj.GetName(), "http://" + s.Host + "/", nil
}

// accepted waits until the route's gateways say whether they take it: a
// parent that refuses it (its listeners' host names do not cover the
// preview's) is an error with the gateway's reason. A gateway that says
// nothing within wait is taken at its silence.
func accepted(ctx context.Context, res dynamic.ResourceInterface, name string, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		obj, err := res.Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			parents, _, _ := unstructured.NestedSlice(obj.Object, "status", "parents")
			for _, p := range parents {
				conds, _, _ := unstructured.NestedSlice(asMap(p), "conditions")
				for _, c := range conds {
					cm := asMap(c)
					if cm["type"] == "Accepted" && cm["status"] == "False" {
						return fmt.Errorf("the gateway does not take the preview route: %v: %v", cm["reason"], cm["message"])
					}
					if cm["type"] == "Accepted" && cm["status"] == "True" {
						return nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }

// routeNaming finds a route of ns, other than skip, that serves host.
func routeNaming(ctx context.Context, dyn dynamic.Interface, ns, host, skip string) (string, error) {
	routes, err := dyn.Resource(httpRouteGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("list HTTPRoutes in namespace %s: %w", ns, err)
	}
	if err == nil {
		for _, r := range routes.Items {
			hosts, _, _ := unstructured.NestedStringSlice(r.Object, "spec", "hostnames")
			if r.GetName() != skip && slices.Contains(hosts, host) {
				return "httproute/" + r.GetName(), nil
			}
		}
	}
	return "", nil
}

func meta(s Spec, apiVersion, kind string) map[string]any {
	return map[string]any{
		"apiVersion": apiVersion, "kind": kind,
		"metadata": map[string]any{
			"name": RouteName(s.Intercept), "namespace": s.Namespace,
			"labels":      map[string]any{ManagedBy: "tunnel", ForLabel: label(s.Intercept, 63)},
			"annotations": map[string]any{OwnerAnnot: s.Owner},
		},
	}
}

// httpRoute is an HTTPRoute with base's parents for s.Host alone, that
// sets the header and sends to the Service's port.
func httpRoute(s Spec, base *unstructured.Unstructured, port int32) *unstructured.Unstructured {
	o := meta(s, httpRouteGVR.GroupVersion().String(), "HTTPRoute")
	all, _, _ := unstructured.NestedSlice(base.Object, "spec", "parentRefs")
	var parents []any
	for _, p := range all {
		if k, _ := asMap(p)["kind"].(string); k == "" || k == "Gateway" { // not a mesh's Service parent
			parents = append(parents, p)
		}
	}
	if len(parents) == 0 {
		return nil
	}
	backend := map[string]any{"name": s.Service}
	if port != 0 {
		backend["port"] = int64(port)
	}
	o["spec"] = map[string]any{
		"parentRefs": parents,
		"hostnames":  []any{s.Host},
		"rules": []any{map[string]any{
			"filters": []any{map[string]any{
				"type":                  "RequestHeaderModifier",
				"requestHeaderModifier": map[string]any{"set": []any{map[string]any{"name": s.Header, "value": s.Value}}},
			}},
			"backendRefs": []any{backend},
		}},
	}
	return &unstructured.Unstructured{Object: o}
}

// mapping is an Emissary Mapping for s.Host alone, on base's gateway
// (ambassador_id), that adds the header and sends where base does.
func mapping(s Spec, base *unstructured.Unstructured, port int32) *unstructured.Unstructured {
	o := meta(s, mappingGVR.GroupVersion().String(), "Mapping")
	service, _, _ := unstructured.NestedString(base.Object, "spec", "service")
	if service == "" {
		service = s.Service + "." + s.Namespace + ":" + strconv.Itoa(int(port))
	}
	spec := map[string]any{
		"hostname":            s.Host,
		"prefix":              "/",
		"service":             service,
		"add_request_headers": map[string]any{s.Header: map[string]any{"value": s.Value, "append": false}},
	}
	if id, ok, _ := unstructured.NestedFieldCopy(base.Object, "spec", "ambassador_id"); ok {
		spec["ambassador_id"] = id
	}
	o["spec"] = spec
	return &unstructured.Unstructured{Object: o}
}

// Close deletes intercept's preview route in ns, of either kind; a route
// of that name that is not tunnel's preview of it is left alone, and one
// already gone is no error.
func Close(ctx context.Context, dyn dynamic.Interface, ns, intercept string) error {
	for i, name := range routeNames(intercept) {
		err := closeNamed(ctx, dyn, ns, intercept, name)
		if i > 0 && errors.Is(err, ErrNotOurs) {
			continue // the old name is another intercept's route now
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func closeNamed(ctx context.Context, dyn dynamic.Interface, ns, intercept, name string) error {
	for _, gvr := range []schema.GroupVersionResource{httpRouteGVR, mappingGVR} {
		res := dyn.Resource(gvr).Namespace(ns)
		obj, err := res.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // gone, or the kind is not there
		}
		if err != nil {
			return fmt.Errorf("read the preview route %s/%s: %w", ns, name, err)
		}
		if obj.GetLabels()[ManagedBy] != "tunnel" || obj.GetLabels()[ForLabel] != label(intercept, 63) {
			return fmt.Errorf("%w: %s %s/%s is not tunnel's preview of intercept %s; left alone", ErrNotOurs, obj.GetKind(), ns, name, intercept)
		}
		uid := obj.GetUID()
		err = res.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the preview route %s/%s: %w", ns, name, err)
		}
	}
	return nil
}

// List finds the preview routes of ns: intercept name → URL.
func List(ctx context.Context, dyn dynamic.Interface, ns string) map[string]string {
	out := map[string]string{}
	for _, gvr := range []schema.GroupVersionResource{httpRouteGVR, mappingGVR} {
		list, err := dyn.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: ManagedBy + "=tunnel," + ForLabel})
		if err != nil {
			continue
		}
		for _, o := range list.Items {
			host, _, _ := unstructured.NestedString(o.Object, "spec", "hostname")
			if hs, _, _ := unstructured.NestedStringSlice(o.Object, "spec", "hostnames"); len(hs) > 0 {
				host = hs[0]
			}
			out[o.GetLabels()[ForLabel]] = "http://" + host + "/"
		}
	}
	return out
}
