package canary

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestStateCheckRefusesWhatNoCanaryWrites(t *testing.T) {
	good := func() *State {
		return &State{Spec: Spec{Service: "shop", Steps: []int{10, 50, 100}}, Canary: "shop-canary", Step: 1}
	}
	if err := good().Check(); err != nil {
		t.Fatalf("a canary's own record: %v", err)
	}
	for what, edit := range map[string]func(*State){
		"another deployment":  func(s *State) { s.Canary = "payments" },
		"no steps":            func(s *State) { s.Spec.Steps = nil },
		"a step past 100":     func(s *State) { s.Spec.Steps = []int{10, 200} },
		"descending steps":    func(s *State) { s.Spec.Steps = []int{50, 10} },
		"a step out of range": func(s *State) { s.Step = 3 },
		"a negative step":     func(s *State) { s.Step = -1 },
	} {
		s := good()
		edit(s)
		if err := s.Check(); err == nil {
			t.Errorf("a record with %s passed", what)
		}
	}
}

// A record whose image, stable Deployment or Prometheus was edited after
// the canary started is not acted on; nor is a deployment that is not
// tunnel's canary deleted.
func TestTrustAndDeleteCheckTheCanarysDeployment(t *testing.T) {
	ctx := context.Background()
	st := &State{Spec: Spec{Service: "shop", Image: "shop:2", Prometheus: "http://prom:9090", Steps: []int{10, 100}},
		Canary: "shop-canary", Stable: "shop", StableImage: "shop:1"}
	canaryDep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "shop-canary", Namespace: "ns",
		Labels: map[string]string{Label: "shop"}, Annotations: witness(st)}}
	w := Workloads{CS: fake.NewClientset(canaryDep,
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "orders-canary", Namespace: "ns"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "orders-canary", Namespace: "ns"}}), Namespace: "ns"}
	if gone, err := w.Trust(ctx, st); err != nil || gone {
		t.Fatalf("the canary's own record: gone %v, %v", gone, err)
	}
	for what, edit := range map[string]func(*State){
		"image":        func(s *State) { s.Spec.Image = "evil:1" },
		"prometheus":   func(s *State) { s.Spec.Prometheus = "http://attacker:9090" },
		"stable":       func(s *State) { s.Stable = "payments" },
		"stable image": func(s *State) { s.StableImage = "evil:1" },
	} {
		edited := *st
		edited.Spec = st.Spec
		edit(&edited)
		if _, err := w.Trust(ctx, &edited); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), strings.ReplaceAll(what, " ", "-")) {
			t.Errorf("a record with another %s: %v, want it refused naming it", what, err)
		}
	}
	if err := w.Delete(ctx, "payments", "shop"); !errors.Is(err, errUntrusted) {
		t.Errorf("deleting another deployment as shop's canary: %v", err)
	}
	if err := w.Delete(ctx, "orders-canary", "orders"); !errors.Is(err, errUntrusted) {
		t.Errorf("deleting a deployment without tunnel's label: %v", err)
	}
	if _, err := w.CS.AppsV1().Deployments("ns").Get(ctx, "orders-canary", metav1.GetOptions{}); err != nil {
		t.Errorf("a deployment that is not tunnel's canary was deleted: %v", err)
	}
}
