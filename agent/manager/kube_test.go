package manager

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func node(name string, podCIDRs ...string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
}

func pod(ns, name string, hostNetwork bool, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{HostNetwork: hostNetwork, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func serviceCIDR(name string, cidrs ...string) *networkingv1.ServiceCIDR {
	return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
}

// fakeCluster is a fake clientset whose discovery serves ServiceCIDRs when
// withServiceCIDRs.
func fakeCluster(withServiceCIDRs bool, objs ...runtime.Object) *fake.Clientset {
	cs := fake.NewClientset(objs...)
	if withServiceCIDRs {
		cs.Resources = []*metav1.APIResourceList{{
			GroupVersion: "networking.k8s.io/v1",
			APIResources: []metav1.APIResource{{Name: "servicecidrs", Kind: "ServiceCIDR"}},
		}}
	}
	return cs
}

func startKube(t *testing.T, cs *fake.Clientset) *KubeSource {
	t.Helper()
	k, err := NewKubeSource(context.Background(), testLogger(t), cs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

// waitCluster waits until k's cluster satisfies ok, re-checking on every change.
func waitCluster(t *testing.T, k *KubeSource, what string, ok func(Cluster) bool) Cluster {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		ch := k.Changed()
		c := k.Current()
		if ok(c) {
			return c
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("timed out waiting for %s; cluster is %+v", what, c)
		}
	}
}

func TestKubeSourceReadsTheCluster(t *testing.T) {
	cs := fakeCluster(true,
		node("n1", "10.244.0.0/24", "fd00:10:244::/64"),
		node("n2", "10.244.1.0/24", "fd00:10:244:1::/64"),
		node("n3"), // not yet allocated
		namespace("kube-system"), namespace("default"), namespace("shop"),
		serviceCIDR("kubernetes", "10.96.0.0/12", "fd00:10:96::/112"),
		pod("shop", "orders", false, "10.244.0.5"),
	)
	k := startKube(t, cs)
	c := k.Current() // right at once: NewKubeSource waits for the caches
	want := Cluster{
		ServiceSubnets: prefixes("10.96.0.0/12", "fd00:10:96::/112"),
		PodSubnets:     prefixes("10.244.0.0/23", "fd00:10:244::/63"),
		Namespaces:     []string{"default", "kube-system", "shop"},
	}
	if !c.Equal(want) {
		t.Errorf("cluster %+v, want %+v", c, want)
	}
}

func TestKubeSourceFollowsChanges(t *testing.T) {
	cs := fakeCluster(true, node("n1", "10.244.0.0/24"), namespace("default"), serviceCIDR("kubernetes", "10.96.0.0/12"))
	k := startKube(t, cs)
	ctx := context.Background()

	if _, err := cs.CoreV1().Namespaces().Create(ctx, namespace("billing"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, k, "the new namespace", func(c Cluster) bool {
		return slices.Equal(c.Namespaces, []string{"billing", "default"})
	})

	if _, err := cs.CoreV1().Nodes().Create(ctx, node("n2", "10.244.8.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, k, "the new node's podCIDR", func(c Cluster) bool {
		return slices.Equal(c.PodSubnets, prefixes("10.244.0.0/24", "10.244.8.0/24"))
	})

	if _, err := cs.NetworkingV1().ServiceCIDRs().Create(ctx, serviceCIDR("extra", "10.200.0.0/16"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, k, "the new ServiceCIDR", func(c Cluster) bool {
		return slices.Equal(c.ServiceSubnets, prefixes("10.96.0.0/12", "10.200.0.0/16"))
	})

	if err := cs.CoreV1().Namespaces().Delete(ctx, "billing", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, k, "the namespace gone", func(c Cluster) bool {
		return slices.Equal(c.Namespaces, []string{"default"})
	})
}

func TestKubeSourceGuessesPodSubnetsFromPods(t *testing.T) {
	cs := fakeCluster(true,
		node("n1"), node("n2"), // a CNI that ignores podCIDRs
		pod("shop", "orders", false, "192.168.10.5", "fd00:aa::5"),
		pod("shop", "cart", false, "192.168.10.77"),
		pod("kube-system", "kube-proxy", true, "172.18.0.2"), // host network: a node IP
		pod("shop", "pending", false),
	)
	k := startKube(t, cs)
	want := prefixes("192.168.10.0/24", "fd00:aa::/64")
	if got := k.Current().PodSubnets; !slices.Equal(got, want) {
		t.Errorf("pod subnets %v, want %v", got, want)
	}

	// A pod on another node's block widens the guess to the /16.
	if _, err := cs.CoreV1().Pods("shop").Create(context.Background(), pod("shop", "payments", false, "192.168.77.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitCluster(t, k, "the widened guess", func(c Cluster) bool {
		return slices.Equal(c.PodSubnets, prefixes("192.168.0.0/16", "fd00:aa::/64"))
	})
}

func TestKubeSourceWithoutServiceCIDRAPI(t *testing.T) {
	cs := fakeCluster(false, node("n1", "10.244.0.0/24"), namespace("default"))
	k := startKube(t, cs)
	c := k.Current()
	if len(c.ServiceSubnets) != 0 {
		t.Errorf("service subnets %v without the API", c.ServiceSubnets)
	}
	if !slices.Equal(c.PodSubnets, prefixes("10.244.0.0/24")) {
		t.Errorf("pod subnets %v", c.PodSubnets)
	}
	for _, a := range cs.Actions() {
		if a.GetResource().Resource == "servicecidrs" {
			t.Errorf("the absent API was called: %v", a)
		}
	}
}

func TestKubeSourceEmptyServiceCIDRs(t *testing.T) {
	k := startKube(t, fakeCluster(true, namespace("default")))
	if c := k.Current(); len(c.ServiceSubnets) != 0 || len(c.PodSubnets) != 0 {
		t.Errorf("cluster %+v, want no subnets", c)
	}
}

func TestKubeSourceStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	k, err := NewKubeSource(ctx, testLogger(t), fakeCluster(true))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	k.Close() // returns once every goroutine is gone (goleak checks)
	k.Close() // twice is fine
}

func TestKubeSourceFailsWhenCanceledBeforeSync(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := NewKubeSource(ctx, testLogger(t), fakeCluster(true)); err == nil {
		t.Error("NewKubeSource with a canceled context succeeded")
	}
}

func TestSlimKeepsWhatIsRead(t *testing.T) {
	p := pod("shop", "orders", true, "10.244.0.5")
	p.Spec.NodeName = "n1"
	got, err := slim(p)
	if err != nil {
		t.Fatal(err)
	}
	sp := got.(*corev1.Pod)
	if sp.Name != "orders" || sp.Namespace != "shop" || !sp.Spec.HostNetwork || len(sp.Status.PodIPs) != 1 ||
		sp.Spec.NodeName != "" || len(sp.Spec.Containers) != 0 || sp.Labels != nil {
		t.Errorf("slim pod %+v", sp)
	}
	again, _ := slim(sp)
	if again.(*corev1.Pod).Status.PodIPs[0] != sp.Status.PodIPs[0] {
		t.Error("slim is not idempotent")
	}
	sn, _ := slim(node("n1", "10.244.0.0/24"))
	if cidrs := sn.(*corev1.Node).Spec.PodCIDRs; !slices.Equal(cidrs, []string{"10.244.0.0/24"}) {
		t.Errorf("slim node podCIDRs %v", cidrs)
	}
	sc := serviceCIDR("kubernetes", "10.96.0.0/12")
	if out, _ := slim(sc); out != sc {
		t.Error("slim changed a ServiceCIDR")
	}
}

func TestKubeSourceWhenDiscoveryFails(t *testing.T) {
	cs := fakeCluster(true, node("n1", "10.244.0.0/24"))
	cs.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("discovery is down")
	})
	k := startKube(t, cs)
	if c := k.Current(); len(c.ServiceSubnets) != 0 || !slices.Equal(c.PodSubnets, prefixes("10.244.0.0/24")) {
		t.Errorf("cluster %+v, want pod subnets only", c)
	}
}

// The address book gives pod and Service addresses their namespaces, and
// marks what no laptop dials or what nobody owns for sure.
func TestKubeSourceAddressBook(t *testing.T) {
	done := pod("jobs", "finished", false, "10.244.0.8")
	done.Status.Phase = corev1.PodSucceeded
	n := node("n1", "10.244.0.0/24")
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.209.0.1"}}
	cs := fakeCluster(true, n, namespace("shop"),
		pod("shop", "orders", false, "10.244.0.5"),
		pod("shop", "again", false, "10.244.0.8"), // reused: the finished pod's address
		pod("shop", "twin", false, "10.244.0.9"), pod("evil", "twin", false, "10.244.0.9"),
		done,
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.10"}, Selector: map[string]string{"app": "web"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.11"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes"},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.1"}}},
	)
	k := startKube(t, cs)
	for addr, want := range map[string]AddrOwner{
		"10.244.0.5": {Kind: AddrPod, Namespace: "shop"},
		"10.244.0.8": {Kind: AddrPod, Namespace: "shop"},
		"10.244.0.9": {Kind: AddrAmbiguous},
		"10.96.0.10": {Kind: AddrService, Namespace: "shop"},
		"10.96.0.11": {Kind: AddrUnselected, Namespace: "shop"},
		"10.96.0.1":  {Kind: AddrAPIServer, Namespace: "default"},
		"10.209.0.1": {Kind: AddrNode},
	} {
		if got, ok := k.Owner(netip.MustParseAddr(addr)); !ok || got != want {
			t.Errorf("Owner(%s) = %+v, %v; want %+v", addr, got, ok, want)
		}
	}
}
