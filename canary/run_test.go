package canary

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"tunnel.dev/tunnel/access"
)

// fakePrometheus answers the Traefik dialect's queries: requests and 5xx
// answers per backend, and a p99.
func fakePrometheus(t *testing.T, canaryRequests, canaryErrors, p99 float64) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.FormValue("query")
		v := 400.0 // the stable backend's requests
		switch {
		case strings.Contains(q, "echo-canary") && strings.Contains(q, `code=~"5.."`):
			v = canaryErrors
		case strings.Contains(q, "histogram_quantile"):
			v = p99
		case strings.Contains(q, "echo-canary"):
			v = canaryRequests
		case strings.Contains(q, `code=~"5.."`):
			v = 0
		}
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%d,"%g"]}]}}`, time.Now().Unix(), v)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// runner is a Runner on fakes, with a canary of "echo" recorded at its
// first step, whose interval is already over.
func runner(t *testing.T, prom string) (*Runner, *dynfake.FakeDynamicClient) {
	t.Helper()
	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "ns"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "echo:v1"}}}}},
	}
	cs := fake.NewClientset(dep)
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{httpRouteGVR: "HTTPRouteList", mappingGVR: "MappingList"},
		route(rule(ref("echo"))))
	r := &Runner{
		Store: Store{CS: cs, Namespace: "ns"}, Leases: Leases{CS: cs, Namespace: "ns"}, Work: Workloads{CS: cs, Namespace: "ns"}, Dyn: dyn,
		Me: &Driver{User: "alice", Host: "test", PID: 1}, Progress: func(s string) { t.Log(s) },
	}
	b := Backends{Namespace: "ns", Stable: "echo", Canary: "echo-canary"}
	router, _ := OpenRouter(dyn, b, "httproute/shop")
	if err := router.Split(context.Background(), Split{Weight: 20}); err != nil {
		t.Fatal(err)
	}
	st := &State{
		Spec: Spec{Service: "echo", Image: "echo:v2", Container: "app", Steps: []int{20, 100}, Interval: Duration(time.Second),
			MaxErrorRate: 0.01, MaxP99: Duration(500 * time.Millisecond), MinRequests: 10, MaxIdle: 2, Prometheus: prom, Metrics: "traefik",
			Timeout: time.Second},
		Namespace: "ns", Stable: "echo", StableImage: "echo:v1", Canary: "echo-canary", Route: "httproute/shop", Port: 80,
		Phase: Progressing, StepStarted: time.Now().Add(-time.Minute), Steps: []Record{{Weight: 20, Started: time.Now().Add(-time.Minute)}},
	}
	if err := r.Store.Create(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return r, dyn
}

func TestDriveRollsBackOnTheErrorRate(t *testing.T) {
	r, dyn := runner(t, fakePrometheus(t, 100, 20, 0.01))
	err := r.Drive(context.Background(), "echo")
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "error rate 20% over 1s is above 1% (stable: 0%)") {
		t.Fatalf("Drive = %v, want a rollback naming the error rate", err)
	}
	if got := backendsOf(t, dyn); got != "echo=-" {
		t.Errorf("route after the rollback: %s", got)
	}
	st, _ := r.Store.Get(context.Background(), "echo")
	if st.Phase != RolledBack || st.Driver != nil || len(st.Checks) != 1 || st.Steps[0].Ended == nil {
		t.Errorf("record after the rollback: %s, driver %v, %d checks, %+v", st.Phase, st.Driver, len(st.Checks), st.Steps)
	}
}

func TestDriveRollsBackWhenTooFewRequestsTwice(t *testing.T) {
	r, _ := runner(t, fakePrometheus(t, 3, 0, 0.01))
	err := r.Drive(context.Background(), "echo")
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "too few requests to judge: 3 in 1s, want at least 10, 2 intervals in a row") {
		t.Fatalf("Drive = %v", err)
	}
}

func TestAbortRequestIsCarriedOut(t *testing.T) {
	r, dyn := runner(t, fakePrometheus(t, 100, 0, 0.01))
	other := *r
	other.Me = &Driver{User: "bob", Host: "elsewhere", PID: 2}
	st, err := other.Ask(context.Background(), "echo", "abort")
	if err == nil || st == nil || st.Phase != Aborted || !strings.Contains(err.Error(), "aborted by bob") {
		t.Fatalf("Ask(abort) = %+v, %v", st, err)
	}
	if got := backendsOf(t, dyn); got != "echo=-" {
		t.Errorf("route after the abort: %s", got)
	}
	if _, err := other.Ask(context.Background(), "echo", "promote"); err == nil || !strings.Contains(err.Error(), "already ended") {
		t.Errorf("promote after the end: %v", err)
	}
}

func TestDriveWaitsForALiveDriver(t *testing.T) {
	r, _ := runner(t, fakePrometheus(t, 100, 0, 0.01))
	if err := r.Leases.Acquire(context.Background(), "echo", &Driver{User: "bob", Host: "elsewhere", PID: 2}, 10*time.Second, &Observed{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := r.Drive(ctx, "echo"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drive over a live driver = %v, want it to wait", err)
	}
}

// A user who may run Deployments but not steer the route is refused before
// anything is created, with the permission named.
func TestPlanNamesAMissingRoutePermission(t *testing.T) {
	r, _ := runner(t, fakePrometheus(t, 100, 0, 0.01))
	cs := r.Work.CS.(*fake.Clientset)
	if _, err := cs.CoreV1().Services("ns").Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "ns"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d, _ := cs.AppsV1().Deployments("ns").Get(context.Background(), "echo", metav1.GetOptions{})
	d.Spec.Template.Labels = map[string]string{"app": "echo"}
	if _, err := cs.AppsV1().Deployments("ns").Update(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		rev := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview)
		rev.Status.Allowed = rev.Spec.ResourceAttributes.Resource != "httproutes" || rev.Spec.ResourceAttributes.Verb != "update"
		return true, rev, nil
	})
	_, err := r.Plan(context.Background(), Spec{Service: "echo", Image: "echo:v2", Prometheus: "http://127.0.0.1:1"})
	if !errors.Is(err, access.ErrForbidden) ||
		!strings.Contains(err.Error(), "you may not update httproutes.gateway.networking.k8s.io in namespace ns, which a canary on httproute/shop needs") {
		t.Errorf("Plan = %v, want the missing route permission named", err)
	}
}

// A standby that cannot be made (a Job of its name that is not tunnel's)
// rolls the canary back before it takes traffic, naming why, and leaves
// no Job of its own behind.
func TestStartRollsBackWhenItsStandbyCannotBeMade(t *testing.T) {
	ctx := context.Background()
	r, dyn := runner(t, fakePrometheus(t, 100, 0, 0.01))
	cs := r.Work.CS.(*fake.Clientset)
	if _, err := cs.BatchV1().Jobs("ns").Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "tunnel-canary-echo", Namespace: "ns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Standby = &Standby{CS: cs, Namespace: "ns", Image: "agent@sha256:abc"}
	if err := r.Store.Update(ctx, "echo", func(st *State) error { st.Phase, st.Steps = Starting, nil; return nil }); err != nil {
		t.Fatal(err)
	}
	_ = r.Leases.Release(ctx, "echo", r.Me)
	if err := router(t, dyn).Remove(ctx); err != nil {
		t.Fatal(err)
	}
	err := r.Drive(ctx, "echo")
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "the canary did not start: its driver in the cluster: job ns/tunnel-canary-echo is not tunnel's") {
		t.Fatalf("Drive = %v, want a rollback naming the standby", err)
	}
	if got := backendsOf(t, dyn); got != "echo=-" {
		t.Errorf("route after the rollback: %s", got)
	}
	if _, err := cs.AppsV1().Deployments("ns").Get(ctx, "echo-canary", metav1.GetOptions{}); err == nil {
		t.Error("the canary deployment was made")
	}
	if j, err := cs.BatchV1().Jobs("ns").Get(ctx, "tunnel-canary-echo", metav1.GetOptions{}); err != nil || j.Labels[Label] != "" {
		t.Errorf("the other Job was touched: %v %v", j, err)
	}
}

func router(t *testing.T, dyn *dynfake.FakeDynamicClient) Router {
	t.Helper()
	r, err := OpenRouter(dyn, Backends{Namespace: "ns", Stable: "echo", Canary: "echo-canary"}, "httproute/shop")
	if err != nil {
		t.Fatal(err)
	}
	return r
}
