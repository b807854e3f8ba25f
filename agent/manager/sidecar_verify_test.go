package manager

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// verifyCluster has deployment shop/web (ReplicaSet web-1, pod web-1-a)
// and answers TokenReviews from reviews: token → the review's status.
func verifyCluster(t *testing.T, reviews map[string]authnv1.TokenReviewStatus) *fake.Clientset {
	t.Helper()
	owner := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true), APIVersion: "apps/v1", UID: types.UID(name)}}
	}
	cs := fake.NewClientset(
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", OwnerReferences: owner("Deployment", "web")}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1-a", Namespace: "shop", UID: "uid-a", OwnerReferences: owner("ReplicaSet", "web-1")}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "loose", Namespace: "shop", UID: "uid-l"}},
	)
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		if len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != rpc.SidecarAudience {
			t.Errorf("token review for audiences %v, want %s", tr.Spec.Audiences, rpc.SidecarAudience)
		}
		tr.Status = reviews[tr.Spec.Token]
		return true, tr, nil
	})
	return cs
}

func podToken(ns, pod, uid string) authnv1.TokenReviewStatus {
	return authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{
		Username: "system:serviceaccount:" + ns + ":default",
		Extra: map[string]authnv1.ExtraValue{
			"authentication.kubernetes.io/pod-name": {pod},
			"authentication.kubernetes.io/pod-uid":  {uid},
		},
	}}
}

func TestPodVerifier(t *testing.T) {
	verify := podVerifier(verifyCluster(t, map[string]authnv1.TokenReviewStatus{
		"good":      podToken("shop", "web-1-a", "uid-a"),
		"loose":     podToken("shop", "loose", "uid-l"),
		"old":       podToken("shop", "web-1-a", "uid-before"),
		"elsewhere": podToken("other", "web-1-a", "uid-a"),
		"bad":       {Authenticated: false, Error: "token expired"},
		"unbound":   {Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:shop:default"}},
	}))
	ctx := context.Background()
	if err := verify(ctx, "good", "shop", "web"); err != nil {
		t.Errorf("a pod of the workload: %v", err)
	}
	for _, tc := range []struct{ token, ns, workload, want string }{
		{"good", "shop", "cart", "does not belong to deployment cart"},
		{"loose", "shop", "web", "not run by a ReplicaSet"},
		{"old", "shop", "web", "earlier pod"},
		{"elsewhere", "shop", "web", "not a service account of namespace shop"},
		{"bad", "shop", "web", "token expired"},
		{"unbound", "shop", "web", "not bound to a pod"},
		{"", "shop", "web", "no token"},
	} {
		err := verify(ctx, tc.token, tc.ns, tc.workload)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("token %q for %s/%s: %v, want an error saying %q", tc.token, tc.ns, tc.workload, err, tc.want)
		}
	}
}
