package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authzv1 "k8s.io/api/authorization/v1"

	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
)

// A session from a pod is a sidecar or nothing: no streams into the
// cluster, no cluster watch, no DNS, no intercept list, no hello.
func TestPodSessionIsASidecarOrNothing(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.AllowLoopback = false })
	m.isPod = func(net.Addr) bool { return true }
	echo, _ := echoTCP(t)
	addr := serve(t, m)
	pod := laptop(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	for _, kind := range []rpc.Kind{rpc.KindTCP, rpc.KindUDP} {
		if _, err := dialStream(t, pod, kind, echo); !errors.Is(err, rpc.StatusForbidden) {
			t.Errorf("a pod's %s stream: %v, want forbidden", kind, err)
		}
	}
	ctl := controlClient(t, pod)
	calls := map[string]func() error{
		"Challenge": func() error { _, err := ctl.Challenge(ctx, &managerpb.ChallengeRequest{}); return err },
		"Hello": func() error {
			_, err := ctl.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version})
			return err
		},
		"Resolve": func() error { _, err := ctl.Resolve(ctx, &managerpb.ResolveRequest{}); return err },
		"WatchCluster": func() error {
			w, err := ctl.WatchCluster(ctx, &managerpb.WatchClusterRequest{})
			if err == nil {
				_, err = w.Recv()
			}
			return err
		},
		"ListIntercepts": func() error { _, err := ctl.ListIntercepts(ctx, &managerpb.ListInterceptsRequest{}); return err },
		"CreateIntercept": func() error {
			_, err := ctl.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "x", Namespace: "shop", Workload: "web", Port: 8080})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s from a pod: %v, want PermissionDenied", name, err)
		}
	}
	// What it may do, it may do at a bounded rate.
	watch := func() error {
		w, err := ctl.WatchIntercepts(ctx, &managerpb.WatchInterceptsRequest{Namespace: "shop", Workload: "web", Pod: "web-1"})
		if err == nil {
			_, err = w.Recv()
		}
		return err
	}
	if err := watch(); err != nil {
		t.Fatalf("a sidecar's watch: %v", err)
	}
	limited := false
	for range 50 {
		if err := watch(); status.Code(err) == codes.ResourceExhausted {
			limited = true
			break
		}
	}
	if !limited {
		t.Error("50 watches in a row from one pod were all served: want a rate limit")
	}
}

// A laptop may not watch a workload's intercepts (every user's header
// values) nor send intercepted connections (another laptop's ports).
func TestLaptopSessionIsNoSidecar(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.AllowLoopback = false })
	addr := serve(t, m)
	lap := laptop(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := controlClient(t, lap).WatchIntercepts(ctx, &managerpb.WatchInterceptsRequest{Namespace: "shop", Workload: "web"})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a laptop's watch: %v, want PermissionDenied", err)
	}
	st := openStream(t, lap, rpc.Header{Kind: rpc.KindIntercept, Dst: netip.MustParseAddrPort("10.0.0.1:80"), Flow: 1})
	if err := rpc.ReadStatus(st); !errors.Is(err, rpc.StatusForbidden) {
		t.Errorf("a laptop's intercept stream: %v, want forbidden", err)
	}
}

// fakeBook knows the addresses of a small cluster.
type fakeBook map[netip.Addr]AddrOwner

func (b fakeBook) Owner(a netip.Addr) (AddrOwner, bool) { o, ok := b[a]; return o, ok }

// rbac allows user the verbs listed as "ns/verb resource[/sub][.group]".
type rbac map[string][]string

// authorize grants "NS/VERB RESOURCE" for any object and "NS/VERB
// RESOURCE:NAME" (a Role's resourceNames) for the object of that name.
func (r rbac) authorize(_ context.Context, id Identity, a authzv1.ResourceAttributes) (bool, error) {
	want := a.Namespace + "/" + access.Describe(a)
	for _, g := range r[id.User] {
		if g == want || (a.Name != "" && g == want+":"+a.Name) {
			return true, nil
		}
	}
	return false, nil
}

func TestReachDecides(t *testing.T) {
	book := fakeBook{
		netip.MustParseAddr("10.244.0.5"): {Kind: AddrPod, Namespace: "dev"},
		netip.MustParseAddr("10.96.0.50"): {Kind: AddrService, Namespace: "dev"},
		netip.MustParseAddr("10.244.0.9"): {Kind: AddrPod, Namespace: "kube-system"},
		netip.MustParseAddr("10.96.0.1"):  {Kind: AddrAPIServer, Namespace: "default"},
		netip.MustParseAddr("10.209.0.1"): {Kind: AddrAPIServer},
		netip.MustParseAddr("10.209.0.2"): {Kind: AddrNode},
		netip.MustParseAddr("10.96.0.60"): {Kind: AddrUnselected, Namespace: "dev"},
		netip.MustParseAddr("10.244.0.6"): {Kind: AddrAmbiguous},
	}
	calls := 0
	authz := func(ctx context.Context, id Identity, a authzv1.ResourceAttributes) (bool, error) {
		calls++
		return rbac{"dev": {"dev/create pods/portforward"}}.authorize(ctx, id, a)
	}
	now := time.Unix(1000, 0)
	newReach := func(mode string) *reach {
		return &reach{mode: mode, book: book, authorize: authz, also: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.19.0.0/16")},
			self: []netip.Addr{netip.MustParseAddr("10.244.0.77")}, access: &accessCache{ttl: 10 * time.Second, max: 100},
			now: func() time.Time { return now }}
	}
	dev := &session{ident: Identity{User: "dev"}}
	nobody := &session{}
	pod := &session{fromPod: true, ident: Identity{User: "dev"}}
	for _, tc := range []struct {
		mode, dst string
		s         *session
		ok        bool
		say       string
	}{
		{rpc.ReachNamespaces, "10.244.0.5", dev, true, ""},
		{rpc.ReachNamespaces, "10.96.0.50", dev, true, ""},
		{rpc.ReachNamespaces, "::ffff:10.244.0.5", dev, true, ""},
		{rpc.ReachNamespaces, "10.244.0.9", dev, false, "may not create pods/portforward"},
		{rpc.ReachNamespaces, "10.96.0.1", dev, false, "API server"},
		{rpc.ReachNamespaces, "10.209.0.1", dev, false, "API server"},
		{rpc.ReachNamespaces, "10.209.0.2", dev, false, "node"},
		{rpc.ReachNamespaces, "10.244.0.77", dev, false, "manager's own pod"},
		{rpc.ReachNamespaces, "169.254.169.254", dev, false, "metadata"},
		{rpc.ReachNamespaces, "168.63.129.16", dev, false, "metadata"},
		{rpc.ReachNamespaces, "fd20:ce::254", dev, false, "metadata"},
		{rpc.ReachNamespaces, "127.0.0.1", dev, false, "loopback"},
		{rpc.ReachNamespaces, "203.0.113.9", dev, false, "--also-reach"},
		{rpc.ReachNamespaces, "192.0.2.10", dev, true, ""},
		{rpc.ReachNamespaces, "10.244.0.5", nobody, false, "not verified"},
		{rpc.ReachNamespaces, "10.244.0.5", pod, false, "pod"},
		{rpc.ReachNamespaces, "10.96.0.60", dev, false, "without a selector"},
		{rpc.ReachCluster, "10.96.0.60", dev, false, "without a selector"},
		{rpc.ReachNamespaces, "10.244.0.6", dev, false, "two namespaces"},
		{rpc.ReachCluster, "10.244.0.9", dev, true, ""},
		{rpc.ReachCluster, "10.209.0.2", dev, false, "node"},
		{rpc.ReachCluster, "203.0.113.9", dev, false, "--also-reach"},
		// Another laptop's end of the WireGuard path, even where an
		// admin's --also-reach covers it.
		{rpc.ReachCluster, "198.19.0.3", dev, false, "WireGuard"},
		{rpc.ReachCluster, "fd74:756e:6e65:6c00::3", dev, false, "WireGuard"},
	} {
		err := newReach(tc.mode).decide(context.Background(), tc.s, netip.MustParseAddr(tc.dst))
		if tc.ok != (err == nil) || (err != nil && (!errors.Is(err, errReach) || !strings.Contains(err.Error(), tc.say))) {
			t.Errorf("%s: %s dials %s: %v, want ok=%v saying %q", tc.mode, tc.s.ident.User, tc.dst, err, tc.ok, tc.say)
		}
	}

	// Answers are cached per user and namespace for the TTL, then asked again.
	r := newReach(rpc.ReachNamespaces)
	calls = 0
	for range 3 {
		_ = r.decide(context.Background(), dev, netip.MustParseAddr("10.244.0.5"))
	}
	if calls != 1 {
		t.Errorf("3 dials asked the API server %d times, want once", calls)
	}
	now = now.Add(11 * time.Second)
	_ = r.decide(context.Background(), dev, netip.MustParseAddr("10.244.0.5"))
	if calls != 2 {
		t.Errorf("after the TTL the API server was asked %d times in all, want 2", calls)
	}
}

// The manager asks the API server whether the caller may intercept, whatever
// the CLI did: a mirror needs what a global intercept needs.
func TestCreateInterceptNeedsTheCallersRights(t *testing.T) {
	m, _ := newTestManager(t, nil)
	m.identify = fakeIdentify
	m.useAuthorizer(rbac{"ada": {"shop/get deployments.apps", "shop/patch deployments.apps", "shop/list services", "shop/update services"}}.authorize)
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ada := controlClient(t, laptop(t, addr))
	if _, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: "proof-ada"}); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []managerpb.InterceptMode{managerpb.InterceptMode_MIRROR, managerpb.InterceptMode_GLOBAL} {
		_, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "m-" + mode.String(), Namespace: "payments", Workload: "api", Port: 8080, Mode: mode})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "patch deployments.apps") || !strings.Contains(err.Error(), "namespace payments") {
			t.Errorf("%s intercept where ada has no rights: %v, want PermissionDenied naming the verb", mode, err)
		}
	}
	if _, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "ok", Namespace: "shop", Workload: "web", Port: 8080, Mode: managerpb.InterceptMode_MIRROR}); err != nil {
		t.Errorf("a mirror where ada has the rights: %v", err)
	}
	list, err := ada.ListIntercepts(ctx, &managerpb.ListInterceptsRequest{})
	if err != nil || len(list.GetIntercepts()) != 1 {
		t.Errorf("intercepts after refusals: %v %v, want only the allowed one", list.GetIntercepts(), err)
	}
}

// The manager asks for the rights of the kind the intercept names, on that
// workload by name: a Role for one StatefulSet grants it and no other, and
// the rights on Deployments grant no StatefulSet.
func TestCreateInterceptAsksForTheKindByName(t *testing.T) {
	m, _ := newTestManager(t, nil)
	m.identify = fakeIdentify
	m.useAuthorizer(rbac{"ada": {"shop/get deployments.apps", "shop/patch deployments.apps",
		"shop/get statefulsets.apps:db", "shop/patch statefulsets.apps:db", "shop/list services", "shop/update services",
		"shop/get cronjobs.batch:nightly", "shop/patch cronjobs.batch:nightly"}}.authorize)
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ada := controlClient(t, laptop(t, addr))
	if _, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: "proof-ada"}); err != nil {
		t.Fatal(err)
	}
	for workload, allowed := range map[string]bool{"sts/db": true, "statefulset/cache": false, "daemonset/db": false, "web": true} {
		name := strings.NewReplacer("/", "-").Replace(workload)
		ic, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: name, Namespace: "shop", Workload: workload, Port: 8080, Mode: managerpb.InterceptMode_GLOBAL})
		if allowed && (err != nil || (workload == "sts/db" && ic.GetSpec().GetWorkload() != "statefulset/db")) {
			t.Errorf("intercept of %s: %v %v, want it, spelled as tunnel writes it", workload, ic, err)
		}
		if !allowed && status.Code(err) != codes.PermissionDenied {
			t.Errorf("intercept of %s without its rights: %v, want PermissionDenied", workload, err)
		}
	}
	if _, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "x", Namespace: "shop", Workload: "pod/x", Port: 8080, Mode: managerpb.InterceptMode_GLOBAL}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an intercept of a kind tunnel does not know: %v", err)
	}
	// A CronJob is replaced (suspended), held by no port: with the rights
	// to change it, and no Service rights, which it does not touch.
	for _, tc := range []struct {
		workload string
		port     uint32
		want     codes.Code
	}{
		{"cronjob/nightly", 0, codes.OK},
		{"cronjob/other", 0, codes.PermissionDenied},
		{"cronjob/nightly", 8080, codes.InvalidArgument}, // nothing sends its pods traffic
		{"web", 0, codes.InvalidArgument},                // only a Job or CronJob is held by no port
	} {
		_, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: fmt.Sprintf("n-%s-%d", strings.ReplaceAll(tc.workload, "/", "-"), tc.port), Namespace: "shop", Workload: tc.workload, Port: tc.port, Mode: managerpb.InterceptMode_GLOBAL})
		if status.Code(err) != tc.want {
			t.Errorf("intercept of %s, port %d: %v, want %v", tc.workload, tc.port, err, tc.want)
		}
	}
}

// One session past its stream limit gets refusals; another goes on.
func TestStreamLimitPerSession(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.MaxStreams = 4 })
	srv, _ := echoTCP(t)
	addr := serve(t, m)
	greedy := laptop(t, addr)
	for i := range 4 {
		if _, err := dialStream(t, greedy, rpc.KindTCP, srv); err != nil {
			t.Fatalf("stream %d within the limit: %v", i, err)
		}
	}
	if _, err := dialStream(t, greedy, rpc.KindTCP, srv); err == nil {
		t.Error("a fifth stream past a limit of 4 was served")
	}
	if _, err := dialStream(t, laptop(t, addr), rpc.KindTCP, srv); err != nil {
		t.Errorf("another session while the first is at its limit: %v", err)
	}
}

// Who intercepts what in a namespace is shown to those who may list its
// pods; one's own intercepts always.
func TestListInterceptsShowsOthersWhereTheCallerMayListPods(t *testing.T) {
	m, _ := newTestManager(t, nil)
	ids := map[string]Identity{"proof-ada": {User: "ada"}, "proof-bob": {User: "bob"}}
	m.identify = func(_ context.Context, c proofClaim) (Identity, error) { return ids[c.Name], nil }
	rights := []string{"shop/get deployments.apps", "shop/patch deployments.apps", "shop/list services", "shop/update services",
		"payments/get deployments.apps", "payments/patch deployments.apps", "payments/list services", "payments/update services"}
	m.useAuthorizer(rbac{"bob": rights, "ada": append([]string{"shop/list pods"}, rights[:4]...)}.authorize)
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hello := func(proof string) managerpb.ManagerClient {
		c := controlClient(t, laptop(t, addr))
		if _, err := c.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, IdentityProof: proof, Host: proof}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	ada, bob := hello("proof-ada"), hello("proof-bob")
	for _, ns := range []string{"shop", "payments"} {
		if _, err := bob.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "b", Namespace: ns, Workload: "web", Port: 8080, Mode: managerpb.InterceptMode_MIRROR}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "a", Namespace: "shop", Workload: "api", Port: 8080, Mode: managerpb.InterceptMode_MIRROR}); err != nil {
		t.Fatal(err)
	}
	list, err := ada.ListIntercepts(ctx, &managerpb.ListInterceptsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ic := range list.GetIntercepts() {
		got = append(got, ic.GetSpec().GetNamespace()+"/"+ic.GetSpec().GetName())
	}
	if strings.Join(got, " ") != "shop/a shop/b" {
		t.Errorf("ada sees %v, want her own and bob's in shop, where she may list pods", got)
	}
}

// Control streams count against the caps for as long as they are open,
// and a session has only a few.
func TestControlStreamsAreBounded(t *testing.T) {
	m, _ := newTestManager(t, nil)
	addr := serve(t, m)
	sess := laptop(t, addr)
	var held []net.Conn
	for range maxControls {
		st := openStream(t, sess, rpc.Header{Kind: rpc.KindControl})
		held = append(held, st)
	}
	eventually(t, "the control streams hold their slots", func() bool {
		m.streamSlots.mu.Lock()
		defer m.streamSlots.mu.Unlock()
		return m.streamSlots.open == maxControls
	})
	extra := openStream(t, sess, rpc.Header{Kind: rpc.KindControl})
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("a control stream past the session's %d: read %d, %v; want it closed", maxControls, n, err)
	}
	for _, c := range held {
		c.Close()
	}
	eventually(t, "closed control streams give their slots back", func() bool {
		m.streamSlots.mu.Lock()
		defer m.streamSlots.mu.Unlock()
		return m.streamSlots.open == 0
	})
}

// Pods together get a quarter of the manager's stream slots; laptops keep
// the rest.
func TestPodsShareAQuarterOfTheStreams(t *testing.T) {
	slots := streamSlots{perSession: 100, total: 8}
	pods := []*session{{fromPod: true}, {fromPod: true}}
	if !slots.take(pods[0]) || !slots.take(pods[1]) {
		t.Fatal("the first two pod streams were refused")
	}
	if slots.take(pods[0]) {
		t.Error("a third pod stream was taken past a quarter of 8")
	}
	lap := &session{}
	for i := range 6 {
		if !slots.take(lap) {
			t.Fatalf("laptop stream %d refused while pods hold their quarter", i)
		}
	}
	slots.give(pods[1])
	if !slots.take(pods[0]) {
		t.Error("a pod stream refused after another gave its slot back")
	}
}
