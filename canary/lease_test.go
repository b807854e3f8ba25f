package canary

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// A driver that stops renewing loses the lease to the one waiting, a
// whole duration after the waiting one last saw it change on its own
// clock (the holder's clock may be anything), and finds out at its next
// renewal.
func TestLeaseTakeover(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	l := Leases{CS: cs, Namespace: "ns"}
	laptop := &Driver{User: "alice", Host: "laptop", PID: 10}
	standby := &Driver{User: "system:serviceaccount:ns:tunnel-canary-shop", Host: "tunnel-canary-shop-x", PID: 1, Cluster: true}
	var mine, seen Observed
	if err := l.Acquire(ctx, "shop", laptop, 6*time.Second, &mine); err != nil {
		t.Fatal(err)
	}
	var driven *ErrDriven
	if err := l.Acquire(ctx, "shop", standby, 6*time.Second, &seen); !errors.As(err, &driven) || !driven.By.same(laptop) {
		t.Fatalf("the standby took a live lease: %v", err)
	}
	// A laptop whose clock is an hour behind still holds while it renews.
	lease, _ := cs.CoordinationV1().Leases("ns").Get(ctx, "tunnel-canary-shop", metav1.GetOptions{})
	skewed := metav1.NewMicroTime(time.Now().Add(-time.Hour))
	lease.Spec.RenewTime = &skewed
	lease.ResourceVersion = "" // the fake keeps no versions: a change is told by the one seen
	if _, err := cs.CoordinationV1().Leases("ns").Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	seen.version = "an older one"
	seen.at = time.Now().Add(-time.Minute)
	if err := l.Acquire(ctx, "shop", standby, 6*time.Second, &seen); !errors.As(err, &driven) {
		t.Fatalf("the standby took the lease of a renewing holder with a slow clock: %v", err)
	}
	// Unchanged for its duration on the standby's clock: the laptop sleeps.
	seen.at = time.Now().Add(-7 * time.Second)
	if err := l.Acquire(ctx, "shop", standby, 6*time.Second, &seen); err != nil {
		t.Fatalf("the standby did not take a lapsed lease: %v", err)
	}
	h, err := l.Holder(ctx, "shop")
	if err != nil || !h.same(standby) || h.TTL != 6*time.Second || time.Since(h.Since) > time.Second || !strings.HasPrefix(h.String(), "the cluster (pod tunnel-canary-shop-x") {
		t.Errorf("holder %+v (%v)", h, err)
	}
	lease, _ = cs.CoordinationV1().Leases("ns").Get(ctx, "tunnel-canary-shop", metav1.GetOptions{})
	if *lease.Spec.LeaseTransitions != 2 {
		t.Errorf("%d transitions, want 2", *lease.Spec.LeaseTransitions)
	}
	if err := l.Renew(ctx, "shop", laptop); !errors.Is(err, ErrTakenOver) {
		t.Errorf("the woken laptop renewed: %v", err)
	}
	// Letting go hands it over at once.
	if err := l.Release(ctx, "shop", standby); err != nil {
		t.Fatal(err)
	}
	if h, _ := l.Holder(ctx, "shop"); h != nil {
		t.Errorf("holder after release: %v", h)
	}
	if err := l.Acquire(ctx, "shop", laptop, 6*time.Second, &mine); err != nil {
		t.Errorf("the laptop could not take a released lease: %v", err)
	}
}

func TestLeaseDurationFitsTheInterval(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{time.Second: 6 * time.Second, 12 * time.Second: 8 * time.Second, time.Minute: LeaseTTL} {
		if got := LeaseDuration(in); got != want {
			t.Errorf("LeaseDuration(%s) = %s, want %s", in, got, want)
		}
	}
}

// The standby runs as an account whose Role names the canary's own
// objects, and which goes with its Job.
func TestStandbyHoldsOnlyTheCanarysObjects(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	st := &State{Spec: Spec{Service: "shop", Steps: []int{10, 100}, Interval: Duration(30 * time.Second), MaxIdle: 3, Timeout: 3 * time.Minute},
		Namespace: "ns", Stable: "shop-v1", Canary: "shop-canary", Route: "httproute/shop-route"}
	s := Standby{CS: cs, Namespace: "ns", Image: "registry.example/tunnel-agent@sha256:abc", PullSecrets: []string{"pull"}}
	if err := s.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, st); err != nil {
		t.Fatalf("a second Apply: %v", err)
	}
	job, err := cs.BatchV1().Jobs("ns").Get(ctx, "tunnel-canary-shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := job.Spec.Template.Spec
	if pod.ServiceAccountName != "tunnel-canary-shop" || pod.Containers[0].Image != s.Image || pod.ImagePullSecrets[0].Name != "pull" ||
		!strings.HasPrefix(strings.Join(pod.Containers[0].Args, " "), "canary-driver --service shop --witness {") || *job.Spec.ActiveDeadlineSeconds < 3600 ||
		job.Spec.Suspend == nil || *job.Spec.Suspend ||
		*pod.Containers[0].SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("job: %+v", job.Spec)
	}
	role, err := cs.RbacV1().Roles("ns").Get(ctx, "tunnel-canary-shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(role.OwnerReferences) != 1 || role.OwnerReferences[0].Name != "tunnel-canary-shop" || role.OwnerReferences[0].Kind != "Job" {
		t.Errorf("role owners %+v", role.OwnerReferences)
	}
	var named []string
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			if v == "create" || v == "list" {
				continue // cannot be narrowed by name in RBAC
			}
			if len(r.ResourceNames) == 0 {
				t.Errorf("rule %v lets %s any %s", r, v, r.Resources)
			}
		}
		named = append(named, r.ResourceNames...)
	}
	if got := strings.Join(named, ","); got != "tunnel-canary-shop,tunnel-canary-shop,shop-v1,shop-canary,shop,shop-canary,shop-route" {
		t.Errorf("named objects: %s", got)
	}
	if _, err := cs.RbacV1().RoleBindings("ns").Get(ctx, "tunnel-canary-shop", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
	// The witness in the Job is what the standby holds the record to.
	var w map[string]string
	if err := json.Unmarshal([]byte(pod.Containers[0].Args[4]), &w); err != nil {
		t.Fatal(err)
	}
	if err := CheckWitness(st, w); err != nil {
		t.Errorf("the record against its own witness: %v", err)
	}
	edited := *st
	edited.Spec.Image = "evil:latest"
	if err := CheckWitness(&edited, w); !errors.Is(err, errUntrusted) || !strings.Contains(err.Error(), `the record says image "evil:latest"`) {
		t.Errorf("an edited record: %v", err)
	}
	// A Job of that name that is not tunnel's is refused.
	other := Standby{CS: fake.NewClientset(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-canary-shop", Namespace: "ns"}}), Namespace: "ns", Image: s.Image}
	if err := other.Apply(ctx, st); err == nil || !strings.Contains(err.Error(), "is not tunnel's driver for the canary of shop") {
		t.Errorf("someone else's job: %v", err)
	}
	// A Role of that name that is not tunnel's is refused, not rewritten.
	theirs := Standby{CS: fake.NewClientset(&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-canary-shop", Namespace: "ns"}}), Namespace: "ns", Image: s.Image}
	if err := theirs.Apply(ctx, st); err == nil || !strings.Contains(err.Error(), "role tunnel-canary-shop is not tunnel's") {
		t.Errorf("someone else's role: %v", err)
	}
	if err := s.Delete(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
}
