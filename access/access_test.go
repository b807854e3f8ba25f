package access

import (
	"context"
	"errors"
	"strings"
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestCheckNamesWhatIsMissing(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview).DeepCopy()
		r.Status.Allowed = r.Spec.ResourceAttributes.Verb == "list" // only listing is allowed
		if r.Spec.ResourceAttributes.Namespace != "dev" {
			t.Errorf("asked about namespace %q, want dev", r.Spec.ResourceAttributes.Namespace)
		}
		return true, r, nil
	})
	err := Check(context.Background(), cs, "dev", "the direct path needs",
		authzv1.ResourceAttributes{Verb: "list", Resource: "pods"},
		authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "portforward"},
		authzv1.ResourceAttributes{Verb: "patch", Group: "apps", Resource: "deployments"},
	)
	want := "you may not create pods/portforward, patch deployments.apps in namespace dev, which the direct path needs"
	if !errors.Is(err, ErrForbidden) || err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check: %v, want ErrForbidden saying %q", err, want)
	}
	if err := Check(context.Background(), cs, "dev", "x", authzv1.ResourceAttributes{Verb: "list", Resource: "pods"}); err != nil {
		t.Errorf("Check of what is allowed: %v", err)
	}
}
