// Package access asks the API server, before anything is changed, whether
// the user may do all that a verb will do: a refusal halfway would leave
// half a change behind. Intercepts, installs and canaries all ask here.
package access

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/workload"
)

// ErrForbidden means the user's own permissions do not allow the change.
var ErrForbidden = errors.New("forbidden")

// Denied lists what of attrs the user may not do, as "VERB RESOURCE[.GROUP]".
func Denied(ctx context.Context, cs kubernetes.Interface, attrs ...authzv1.ResourceAttributes) ([]string, error) {
	var denied []string
	for _, r := range attrs {
		rev, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &r}}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("ask the API server what you may do: %w", err)
		}
		if !rev.Status.Allowed {
			denied = append(denied, Describe(r))
		}
	}
	return denied, nil
}

// Describe names an attribute as "VERB RESOURCE[/SUB][.GROUP]".
func Describe(r authzv1.ResourceAttributes) string {
	res := r.Resource
	if r.Subresource != "" {
		res += "/" + r.Subresource
	}
	if r.Group != "" {
		res += "." + r.Group
	}
	return r.Verb + " " + res
}

// InterceptRights are what a user needs in a namespace to intercept a
// workload of kind there (workload.Kind's name; "" for a Deployment): the
// rights to add the sidecar and point the Service at it (and so to take
// the workload's traffic without tunnel). The CLI asks before changing
// anything; the manager asks again before it records the intercept, since
// a caller need not use the CLI. A ReplicaSet's pods take a new template
// only when deleted, which tunnel does for it.
//
// name narrows the workload's own rights to that one ("" for any: what the
// CLI asks before it knows which), so that a Role by resourceNames counts.
func InterceptRights(kind, name string) []authzv1.ResourceAttributes {
	k, ok := workload.KindNamed(kind)
	if !ok {
		k, _ = workload.KindNamed(workload.Deployment)
	}
	rights := []authzv1.ResourceAttributes{
		{Verb: "get", Group: k.Resource.Group, Resource: k.Resource.Resource, Name: name},
		{Verb: "patch", Group: k.Resource.Group, Resource: k.Resource.Resource, Name: name},
	}
	if k.Batch { // replaced by suspending it: no sidecar, no Service
		return rights
	}
	rights = append(rights, ServiceRights()...)
	if k.Name == workload.ReplicaSet {
		rights = append(rights, authzv1.ResourceAttributes{Verb: "delete", Resource: "pods"})
	}
	return rights
}

// ServiceRights are the part of InterceptRights that every kind needs:
// to find the Services in front of the workload and point them at the
// sidecar.
func ServiceRights() []authzv1.ResourceAttributes {
	return []authzv1.ResourceAttributes{{Verb: "list", Resource: "services"}, {Verb: "update", Resource: "services"}}
}

// Check returns ErrForbidden in a sentence when the user may not do all of
// attrs in namespace ns: "you may not …, which WHY".
func Check(ctx context.Context, cs kubernetes.Interface, ns, why string, attrs ...authzv1.ResourceAttributes) error {
	for i := range attrs {
		attrs[i].Namespace = ns
	}
	denied, err := Denied(ctx, cs, attrs...)
	if err != nil || len(denied) == 0 {
		return err
	}
	where := ""
	if ns != "" {
		where = " in namespace " + ns
	}
	return fmt.Errorf("%w: you may not %s%s, which %s", ErrForbidden, strings.Join(denied, ", "), where, why)
}

// Verbs returns one attribute per verb for the resource.
func Verbs(group, resource string, verbs ...string) []authzv1.ResourceAttributes {
	out := make([]authzv1.ResourceAttributes, len(verbs))
	for i, v := range verbs {
		out[i] = authzv1.ResourceAttributes{Verb: v, Group: group, Resource: resource}
	}
	return out
}
