package cli

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/workload"
)

// fakeSidecars answers probes as a Service's pods would, in turn: pods
// whose name is in has say yes to the token, the others no.
type fakeSidecars struct {
	mu     sync.Mutex
	pods   []string
	has    map[string]bool
	token  string
	probes int
}

func (f *fakeSidecars) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pod := f.pods[f.probes%len(f.pods)]
	f.probes++
	w.Header().Set(rpc.SidecarHeader, pod)
	if r.Header.Get(rpc.ProbeHeader) == f.token && f.has[pod] {
		w.Header().Set(rpc.ProbeHasHeader, "yes")
	} else {
		w.Header().Set(rpc.ProbeHasHeader, "no")
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSidecars) set(pod string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.has[pod] = true
}

// planFor is a plan whose Service is srv, with replicas pods.
func planFor(t *testing.T, srv *httptest.Server, replicas int32, affinity corev1.ServiceAffinity) *inject.Plan {
	host, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &inject.Plan{
		Workload: &workload.Workload{Ref: workload.Ref{Kind: workload.Deployment, Name: "web"},
			Object: &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"replicas": int64(replicas)}}}},
		Service:     &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: host, SessionAffinity: affinity}},
		ServicePort: corev1.ServicePort{Port: int32(p)},
	}
}

// intercept returns only once every pod's sidecar has the intercept: one
// that lags keeps it waiting, however many yeses the others give.
func TestAwaitInterceptWaitsForEveryPod(t *testing.T) {
	token := rpc.ProbeToken(bytes.Repeat([]byte{1}, rpc.DirectKeyLen))
	f := &fakeSidecars{pods: []string{"web-1", "web-2"}, has: map[string]bool{"web-1": true}, token: token}
	srv := httptest.NewServer(f)
	defer srv.Close()
	plan := planFor(t, srv, 2, corev1.ServiceAffinityNone)
	go func() { time.Sleep(500 * time.Millisecond); f.set("web-2") }()
	var warn bytes.Buffer
	start := time.Now()
	awaitIntercept(context.Background(), plan, token, 5*time.Second, func(string) {}, &warn)
	if took := time.Since(start); took < 500*time.Millisecond || warn.Len() != 0 {
		t.Errorf("returned after %s (warning %q); want after web-2 has it, with no warning", took, warn.String())
	}

	// A pod that never gets it: the wait ends with a warning.
	f = &fakeSidecars{pods: []string{"web-1", "web-2"}, has: map[string]bool{"web-1": true}, token: token}
	srv2 := httptest.NewServer(f)
	defer srv2.Close()
	warn.Reset()
	awaitIntercept(context.Background(), planFor(t, srv2, 2, corev1.ServiceAffinityNone), token, 700*time.Millisecond, func(string) {}, &warn)
	if warn.Len() == 0 {
		t.Error("no warning though web-2 never had the intercept")
	}
	// With client affinity one pod is all the CLI's requests reach.
	warn.Reset()
	awaitIntercept(context.Background(), planFor(t, srv2, 2, corev1.ServiceAffinityClientIP), token, 700*time.Millisecond, func(string) {}, &warn)
	if warn.Len() != 0 {
		t.Errorf("client affinity: warning %q", warn.String())
	}
}
