package manager

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
)

func TestHello(t *testing.T) {
	m, _ := newTestManager(t, nil)
	addr := serve(t, m)
	ctl := controlClient(t, laptop(t, addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	req := &managerpb.HelloRequest{ClientVersion: version.Get().Version, User: "ada", Host: "lovelace"}
	a, err := ctl.Hello(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if a.GetManagerVersion() != version.Get().Version {
		t.Errorf("manager version %q, want %q", a.GetManagerVersion(), version.Get().Version)
	}
	// A session says who it is once: a second Hello cannot change it.
	if _, err := ctl.Hello(ctx, req); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second hello on one session: %v, want FailedPrecondition", err)
	}
	if a.GetSessionId() == "" {
		t.Error("no session id")
	}
	b, err := controlClient(t, laptop(t, addr)).Hello(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if b.GetSessionId() == a.GetSessionId() {
		t.Errorf("two sessions share the id %q", a.GetSessionId())
	}
}

func TestWatchClusterSendsAtOnceAndOnChange(t *testing.T) {
	m, src := newTestManager(t, nil)
	ctl := controlClient(t, laptop(t, serve(t, m)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	w, err := ctl.WatchCluster(ctx, &managerpb.WatchClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetClusterDomain() != "cluster.test" {
		t.Errorf("cluster domain %q, want cluster.test (from the search list)", first.GetClusterDomain())
	}
	if got := first.GetDnsServers(); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("DNS servers %q, want [127.0.0.1]", got)
	}
	if !slices.Equal(first.GetServiceSubnets(), []string{"10.96.0.0/12"}) ||
		!slices.Equal(first.GetPodSubnets(), []string{"10.244.0.0/16"}) ||
		!slices.Equal(first.GetNamespaces(), []string{"default", "shop"}) {
		t.Errorf("first ClusterInfo %v does not match the source", first)
	}

	// A Set that changes nothing sends nothing: the next message is the real change.
	src.Set(testCluster())
	changed := testCluster()
	changed.Namespaces = append(changed.Namespaces, "billing")
	changed.PodSubnets = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	src.Set(changed)
	next, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(next.GetNamespaces(), []string{"default", "shop", "billing"}) ||
		!slices.Equal(next.GetPodSubnets(), []string{"10.244.0.0/16", "fd00:10:244::/56"}) {
		t.Errorf("update %v does not match the changed source", next)
	}
}

func TestWatchClusterManyWatchers(t *testing.T) {
	m, src := newTestManager(t, nil)
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var watches []managerpb.Manager_WatchClusterClient
	for range 3 { // each on a session of its own
		w, err := controlClient(t, laptop(t, addr)).WatchCluster(ctx, &managerpb.WatchClusterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
		watches = append(watches, w)
	}
	c := testCluster()
	c.Namespaces = []string{"only"}
	src.Set(c)
	for i, w := range watches {
		info, err := w.Recv()
		if err != nil {
			t.Fatalf("watcher %d: %v", i, err)
		}
		if !slices.Equal(info.GetNamespaces(), []string{"only"}) {
			t.Errorf("watcher %d got %v", i, info.GetNamespaces())
		}
	}
}

func TestWatchClusterEndsWithServe(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ln := serve(t, m)
	ctl := controlClient(t, laptop(t, ln))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := ctl.WatchCluster(ctx, &managerpb.WatchClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
	// The watch is left open: serve's cleanup must end it (goleak checks).
}

func TestGRPCErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{errBadQuery, codes.InvalidArgument},
		{errNoAnswer, codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("boom"), codes.Internal},
	} {
		if got := status.Code(grpcError(fmt.Errorf("wrapped: %w", tc.err))); got != tc.want {
			t.Errorf("grpcError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A laptop of a version the manager does not serve hears, in one sentence,
// which side to upgrade; its session gets nothing.
func TestHelloRefusesVersionsThatDoNotGoTogether(t *testing.T) {
	m, _ := newTestManager(t, nil)
	var read []string // proofs the manager read, and so deleted
	m.identify = func(ctx context.Context, c proofClaim) (Identity, error) {
		read = append(read, c.Name)
		return fakeIdentify(ctx, c)
	}
	ctl := controlClient(t, laptop(t, serve(t, m)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := ctl.Hello(ctx, &managerpb.HelloRequest{ClientVersion: "some-other-build", User: "ada", IdentityProof: "proof-ada"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "tunnel install --upgrade") {
		t.Fatalf("hello from another build: %v", err)
	}
	// A refused laptop retries: its proof must not stay behind each time.
	if len(read) != 1 || read[0] != "proof-ada" {
		t.Errorf("the refused hello's proof was read %v, want once", read)
	}
}

// A sidecar of a version the manager does not serve is refused and gets
// nothing; one from before versions were sent is served, as before.
func TestWatchRefusesSidecarsOfVersionsNotServed(t *testing.T) {
	m, _ := newTestManager(t, nil)
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watch := func(v string) error {
		w, err := controlClient(t, laptop(t, addr)).WatchIntercepts(ctx,
			&managerpb.WatchInterceptsRequest{Namespace: "shop", Workload: "web", Pod: "web-1", SidecarVersion: v})
		if err != nil {
			return err
		}
		_, err = w.Recv()
		return err
	}
	if err := watch("some-other-build"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a sidecar of another build: %v, want FailedPrecondition", err)
	}
	if err := watch(""); err != nil {
		t.Errorf("a sidecar that sends no version: %v", err)
	}
	if err := watch(version.Get().Version); err != nil {
		t.Errorf("a sidecar of the manager's version: %v", err)
	}
}
