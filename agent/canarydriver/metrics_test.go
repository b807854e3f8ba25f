package canarydriver

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

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

// Scrapes that hang on the API server do not pile up: of three at once,
// one is turned away while two wait, and a POST is not served at all.
func TestScrapesInFlightAreBounded(t *testing.T) {
	cs := fake.NewClientset()
	st := &canary.State{Spec: canary.Spec{Service: "web", Steps: []int{50}, Interval: canary.Duration(time.Second)}, Canary: "web-canary", Phase: canary.Progressing}
	if err := (canary.Store{CS: cs, Namespace: "shop"}).Create(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	cs.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	h := metricsHandler(newCollector(canary.Store{CS: cs, Namespace: "shop"}, canary.Leases{CS: cs, Namespace: "shop"}, "web"))
	srv := httptest.NewServer(h)
	defer srv.Close()
	unblock := sync.OnceFunc(func() { close(release) })
	defer unblock() // before Close, which waits for the handlers
	codes := make(chan int, 3)
	for range 3 {
		go func() {
			r, err := http.Get(srv.URL + "/metrics")
			if err != nil {
				codes <- 0
				return
			}
			r.Body.Close()
			codes <- r.StatusCode
		}()
	}
	select {
	case code := <-codes:
		if code != http.StatusServiceUnavailable {
			t.Errorf("the first answer of three scrapes in flight: HTTP %d, want 503", code)
		}
	case <-time.After(3 * time.Second): // well before the handler's own timeout answers 503
		t.Fatal("three scrapes in flight: none was turned away")
	}
	unblock()
	for range 2 {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("a scrape that waited: HTTP %d, want 200", code)
		}
	}
	r, err := http.Post(srv.URL+"/metrics", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: HTTP %d, want 405", r.StatusCode)
	}
}

// However often it is scraped, the standby reads the record and the lease
// at most once a second; a record it cannot read fails the scrape.
func TestScrapesReadTheRecordOnceASecond(t *testing.T) {
	cs := fake.NewClientset()
	store := canary.Store{CS: cs, Namespace: "shop"}
	c := newCollector(store, canary.Leases{CS: cs, Namespace: "shop"}, "web")
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	reads := func() int {
		n := 0
		for _, a := range cs.Actions() {
			if a.GetVerb() == "get" {
				n++
			}
		}
		return n
	}
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "no canary for service web") {
		t.Errorf("a scrape without a record: %v, want it to fail saying so", err)
	}
	if err := store.Create(context.Background(), &canary.State{Spec: canary.Spec{Service: "web", Steps: []int{50}, Interval: canary.Duration(time.Second)}, Canary: "web-canary", Phase: canary.Progressing}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(readEvery)
	before := reads()
	for range 5 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	if got := reads() - before; got != 2 { // the record and the lease, once
		t.Errorf("five scrapes within a second made %d reads, want 2", got)
	}
	now = now.Add(readEvery)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	if got := reads() - before; got != 4 {
		t.Errorf("a scrape a second later: %d reads in all, want 4", got)
	}
}
