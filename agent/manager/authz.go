package manager

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/access"
)

// authorizer asks whether a verified user may do attrs: the manager decides
// by the caller's own RBAC, never by what the CLI checked.
type authorizer func(ctx context.Context, id Identity, attrs authzv1.ResourceAttributes) (bool, error)

// sarAuthorizer asks the API server with a SubjectAccessReview.
func sarAuthorizer(cs kubernetes.Interface) authorizer {
	return func(ctx context.Context, id Identity, attrs authzv1.ResourceAttributes) (bool, error) {
		spec := authzv1.SubjectAccessReviewSpec{User: id.User, UID: id.UID, Groups: id.Groups, ResourceAttributes: &attrs}
		if len(id.Extra) > 0 {
			spec.Extra = map[string]authzv1.ExtraValue{}
			for k, v := range id.Extra {
				spec.Extra[k] = v
			}
		}
		var rev *authzv1.SubjectAccessReview
		err := retryTransient(ctx, 3*time.Second, func() (err error) {
			rev, err = cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
			return err
		})
		if err != nil {
			return false, fmt.Errorf("ask the API server what %s may do: %w", id.User, err)
		}
		return rev.Status.Allowed, nil
	}
}

// checkRights returns errInterceptForbidden in one sentence naming what id
// may not do of attrs in namespace ns.
func (m *Manager) checkRights(ctx context.Context, id Identity, ns, why string, attrs []authzv1.ResourceAttributes) error {
	if m.authorize == nil {
		return nil
	}
	var denied []string
	for _, a := range attrs {
		a.Namespace = ns
		ok, err := m.authorize(ctx, id, a)
		if err != nil {
			return err
		}
		if !ok {
			denied = append(denied, access.Describe(a))
		}
	}
	if len(denied) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s may not %s in namespace %s, which %s", errInterceptForbidden, id.User, strings.Join(denied, ", "), ns, why)
}

// accessCache remembers SubjectAccessReview answers for a short time, so a
// session's dials do not each ask the API server; an answer expires within
// ttl, which is how fast a change of RBAC reaches open sessions. While the
// API server cannot answer (it restarts for an upgrade), the last answer
// holds for up to stale: nobody can change RBAC then either.
type accessCache struct {
	ttl   time.Duration
	stale time.Duration
	max   int // entries; past it the cache starts over
	mu    sync.Mutex
	seen  map[accessKey]accessAnswer
}

type accessKey struct{ user, ns, verb string }

type accessAnswer struct {
	ok bool
	at time.Time
}

// allowed answers from the cache or with ask.
func (c *accessCache) allowed(key accessKey, now time.Time, ask func() (bool, error)) (bool, error) {
	c.mu.Lock()
	last, known := c.seen[key]
	c.mu.Unlock()
	if known && now.Sub(last.at) < c.ttl {
		return last.ok, nil
	}
	ok, err := ask()
	if err != nil {
		if known && now.Sub(last.at) < c.stale {
			return last.ok, nil
		}
		return false, err // a failed review is asked again next time
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil || len(c.seen) >= c.max {
		c.seen = map[accessKey]accessAnswer{}
	}
	c.seen[key] = accessAnswer{ok: ok, at: now}
	return ok, nil
}
