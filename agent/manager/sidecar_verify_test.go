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
	"tunnel.dev/tunnel/workload"
)

// verifyCluster has deployment shop/web (ReplicaSet web-1, pod web-1-a
// and look-alikes) and answers TokenReviews from reviews: token → the
// review's status.
func verifyCluster(t *testing.T, reviews map[string]authnv1.TokenReviewStatus) *fake.Clientset {
	t.Helper()
	owner := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true), APIVersion: "apps/v1", UID: types.UID(name)}}
	}
	hash := map[string]string{"app": "web", appsv1.DefaultDeploymentUniqueLabelKey: "abc"}
	sidecar := corev1.Container{Name: rpc.SidecarContainer, Image: "agent@sha256:1", Args: []string{"sidecar", "--workload", "web"},
		VolumeMounts: []corev1.VolumeMount{{Name: rpc.SidecarTokenVolume, MountPath: "/t"}}}
	app := corev1.Container{Name: "app", Image: "web:1"}
	pod := func(name, uid string, labels map[string]string, containers ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID(uid), Labels: labels,
			OwnerReferences: owner("ReplicaSet", "web-1")}, Spec: corev1.PodSpec{Containers: containers}}
	}
	otherImage := sidecar
	otherImage.Image = "evil:latest"
	thief := app
	thief.VolumeMounts = sidecar.VolumeMounts
	mesh := pod("meshed", "uid-m", hash, app, sidecar, corev1.Container{Name: "istio-proxy", Image: "proxy:1"})
	sharing := pod("sharing", "uid-s", hash, app, sidecar)
	sharing.Spec.ShareProcessNamespace = ptr.To(true)
	second := pod("second-token", "uid-2", hash, app, sidecar)
	second.Spec.Volumes = []corev1.Volume{{Name: "mine", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: rpc.SidecarAudience}}}}}}}
	loose := pod("loose", "uid-l", hash, app, sidecar)
	loose.OwnerReferences = nil
	cs := fake.NewClientset(
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "web"},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{app, sidecar}}}}},
		// A ReplicaSet anyone who may create them can write, naming the
		// Deployment's UID, with a sidecar of its own and its pod.
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-evil", Namespace: "shop", UID: "web-evil", Labels: hash,
			OwnerReferences: owner("Deployment", "web")},
			Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{app, otherImage}}}}},
		func() *corev1.Pod {
			p := pod("evil-a", "uid-e", hash, app, otherImage)
			p.OwnerReferences = owner("ReplicaSet", "web-evil")
			return p
		}(),
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "web-1", Labels: hash,
			OwnerReferences: owner("Deployment", "web")},
			Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{app, sidecar}}}}},
		pod("web-1-a", "uid-a", hash, app, sidecar),
		loose,
		// Pods anyone who may create pods can make, naming the ReplicaSet.
		pod("forged", "uid-f", map[string]string{"app": "web"}, app, sidecar),
		pod("other-image", "uid-o", hash, app, otherImage),
		pod("thief", "uid-t", hash, thief, sidecar),
		mesh, sharing, second,
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
	cs := verifyCluster(t, map[string]authnv1.TokenReviewStatus{
		"good":      podToken("shop", "web-1-a", "uid-a"),
		"loose":     podToken("shop", "loose", "uid-l"),
		"forged":    podToken("shop", "forged", "uid-f"),
		"image":     podToken("shop", "other-image", "uid-o"),
		"thief":     podToken("shop", "thief", "uid-t"),
		"meshed":    podToken("shop", "meshed", "uid-m"),
		"sharing":   podToken("shop", "sharing", "uid-s"),
		"second":    podToken("shop", "second-token", "uid-2"),
		"evil":      podToken("shop", "evil-a", "uid-e"),
		"old":       podToken("shop", "web-1-a", "uid-before"),
		"elsewhere": podToken("other", "web-1-a", "uid-a"),
		"bad":       {Authenticated: false, Error: "token expired"},
		"unbound":   {Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:shop:default"}},
	})
	verify := podVerifier(workload.Client{CS: cs})
	ctx := context.Background()
	recheck, err := verify(ctx, "good", "shop", "web")
	if err != nil {
		t.Fatalf("a pod of the workload: %v", err)
	}
	if err := recheck(ctx); err != nil {
		t.Errorf("the pod checked again: %v", err)
	}
	// A container admission added (a mesh's proxy) is no reason to refuse.
	if _, err := verify(ctx, "meshed", "shop", "web"); err != nil {
		t.Errorf("a pod with a mesh proxy: %v", err)
	}
	for _, tc := range []struct{ token, ns, workload, want string }{
		{"good", "shop", "cart", "does not belong to deployment shop/cart"},
		{"loose", "shop", "web", "not run by a ReplicaSet"},
		{"old", "shop", "web", "earlier pod"},
		{"elsewhere", "shop", "web", "not a service account of namespace shop"},
		{"bad", "shop", "web", "token expired"},
		{"unbound", "shop", "web", "not bound to a pod"},
		{"", "shop", "web", "no token"},
		{"forged", "shop", "web", "was not made by ReplicaSet web-1"},
		{"image", "shop", "web", "does not run the sidecar its workload injects"},
		{"thief", "shop", "web", "container app of pod thief mounts the sidecar's token"},
		{"sharing", "shop", "web", "shares its process namespace"},
		{"second", "shop", "web", "holds a token for the manager"},
		{"evil", "shop", "web", "does not run the sidecar its workload injects now"},
	} {
		_, err := verify(ctx, tc.token, tc.ns, tc.workload)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("token %q for %s/%s: %v, want an error saying %q", tc.token, tc.ns, tc.workload, err, tc.want)
		}
	}
}

// A watching sidecar is checked again: once its pod is gone, or its
// deployment replaced by another of the same name, the check fails.
func TestPodVerifierRecheck(t *testing.T) {
	cs := verifyCluster(t, map[string]authnv1.TokenReviewStatus{"good": podToken("shop", "web-1-a", "uid-a")})
	ctx := context.Background()
	recheck, err := podVerifier(workload.Client{CS: cs})(ctx, "good", "shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.AppsV1().Deployments("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments("shop").Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "web-2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := recheck(ctx); err == nil || !strings.Contains(err.Error(), "earlier deployment") {
		t.Errorf("after the deployment was replaced: %v", err)
	}
	if err := cs.CoreV1().Pods("shop").Delete(ctx, "web-1-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := recheck(ctx); err == nil {
		t.Error("after the pod was deleted: the check still passes")
	}
}
