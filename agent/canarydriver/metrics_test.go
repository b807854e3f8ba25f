package canarydriver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/kubernetes/fake"

	"tunnel.dev/tunnel/canary"
)

// The standby's metrics say the canary's step, share and checks, labelled
// with the backend name the canary dashboard selects by.
func TestCollectorSaysTheCanarysState(t *testing.T) {
	cs := fake.NewClientset()
	store := canary.Store{CS: cs, Namespace: "shop"}
	st := &canary.State{Spec: canary.Spec{Service: "web", Steps: []int{canary.MatchStep, 50}, Match: "header:x-beta=1", Interval: canary.Duration(time.Second)},
		Canary: "web-canary", Phase: canary.Progressing, Step: 1,
		Checks: []canary.Check{{Custom: []canary.CheckValue{{Name: "conversion", Value: 0.5, Op: ">=", Bound: 0.9}}}}}
	if err := store.Create(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	c := newCollector(store, canary.Leases{CS: cs, Namespace: "shop"}, "web")
	want := `
# HELP tunnel_canary_check_value The last value of each of the canary's own checks (--check).
# TYPE tunnel_canary_check_value gauge
tunnel_canary_check_value{backend="shop-web",canary="web",check="conversion"} 0.5
# HELP tunnel_canary_step The canary's step, from 1; 0 outside its steps.
# TYPE tunnel_canary_step gauge
tunnel_canary_step{backend="shop-web",canary="web"} 2
# HELP tunnel_canary_weight The canary's share of the Service's traffic, in percent (0 outside its steps).
# TYPE tunnel_canary_weight gauge
tunnel_canary_weight{backend="shop-web",canary="web"} 50
# HELP tunnel_canary_match 1 while requests that match the dark launch go to the canary.
# TYPE tunnel_canary_match gauge
tunnel_canary_match{backend="shop-web",canary="web"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "tunnel_canary_check_value", "tunnel_canary_step", "tunnel_canary_weight", "tunnel_canary_match"); err != nil {
		t.Error(err)
	}
}
