package deploy

import (
	"errors"
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// A deploy after a canary's promotion takes the image back; a field anyone
// else set stays a conflict that names them.
func TestPromotedOnly(t *testing.T) {
	conflict := func(messages ...string) error {
		err := apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, "shop", errors.New("Apply failed"))
		for _, m := range messages {
			err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes,
				metav1.StatusCause{Type: metav1.CauseTypeFieldManagerConflict, Message: m, Field: ".spec.template.spec.containers[name=\"shop\"].image"})
		}
		return err
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{conflict(`conflict with "tunnel-canary" using apps/v1 at 2026-12-07T16:00:00Z`), true},
		{conflict(`conflict with "tunnel-canary" using apps/v1`, `conflict with "tunnel-canary" using apps/v1`), true},
		{conflict(`conflict with "kubectl-edit" using apps/v1`), false},
		{conflict(`conflict with "tunnel-canary" using apps/v1`, `conflict with "helm" using apps/v1`), false},
		{conflict(`conflict with "tunnel-canary-impostor" using apps/v1`), false},
		{conflict(), false},
		{fmt.Errorf("wrapped: %w", conflict(`conflict with "tunnel-canary" using apps/v1`)), true},
		{errors.New("conflict with \"tunnel-canary\""), false},
	} {
		if got := promotedOnly(c.err); got != c.want {
			t.Errorf("promotedOnly(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
