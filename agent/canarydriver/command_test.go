package canarydriver

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"tunnel.dev/tunnel/canary"
)

func standby(t *testing.T) *canary.Runner {
	t.Helper()
	cs := fake.NewClientset()
	return &canary.Runner{
		Store: canary.Store{CS: cs, Namespace: "ns"}, Leases: canary.Leases{CS: cs, Namespace: "ns"},
		Work:     canary.Workloads{CS: cs, Namespace: "ns"},
		Me:       &canary.Driver{User: "system:serviceaccount:ns:tunnel-canary-shop", Host: "pod", PID: 1, Cluster: true},
		Progress: func(s string) { t.Log(s) }, Witness: map[string]string{},
	}
}

// A canary that ended, or whose record is gone, ends the standby well; a
// standby stopped before the end fails, so that its Job starts another.
func TestRunEndsWithTheCanary(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := standby(t)
	if err := Run(context.Background(), r, "shop", log); err != nil {
		t.Errorf("no record: %v", err)
	}
	st := &canary.State{Spec: canary.Spec{Service: "shop", Steps: []int{10, 100}, Interval: canary.Duration(time.Second)},
		Canary: "shop-canary", Phase: canary.RolledBack, Reason: "error rate"}
	if err := r.Store.Create(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), r, "shop", log); err != nil {
		t.Errorf("a canary that ended: %v", err)
	}
	// Another driver holds a live canary: the standby waits, and a stop
	// then is a failure.
	r2 := standby(t)
	st.Phase = canary.Progressing
	if err := r2.Store.Create(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if err := r2.Leases.Acquire(context.Background(), "shop", &canary.Driver{User: "alice", Host: "laptop", PID: 9}, 10*time.Second, &canary.Observed{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := Run(ctx, r2, "shop", log); err == nil || !strings.Contains(err.Error(), "stopped before the canary's end") {
		t.Errorf("stopped while standing by: %v", err)
	}
}
