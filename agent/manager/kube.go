package manager

// The manager's ServiceAccount needs this ClusterRole (nothing else: DNS goes
// to the pod's own nameservers, and discovery is open to every account):
//
//	rules:
//	- apiGroups: [""]
//	  resources: [nodes, namespaces, pods]
//	  verbs: [list, watch]
//	- apiGroups: [networking.k8s.io]
//	  resources: [servicecidrs]
//	  verbs: [list, watch]

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

const (
	// kubeSyncTimeout bounds the first list of every informer: past it, RBAC
	// or the API server is wrong and the manager should say so and exit.
	kubeSyncTimeout = time.Minute
	// kubeDebounce coalesces bursts of events (a rollout updates many pods)
	// into one recomputation.
	kubeDebounce = 100 * time.Millisecond
)

// KubeSource is the ClusterSource of a real cluster, fed by informers:
// service subnets from ServiceCIDRs, pod subnets from the nodes' podCIDRs
// (or, when no node has any, from the pods' IPs), and the namespaces.
type KubeSource struct {
	logger    *slog.Logger
	factories []informers.SharedInformerFactory
	nodes     cache.Store
	pods      cache.Store
	spaces    cache.Store
	cidrs     cache.Store // nil when the ServiceCIDR API is absent
	services  cache.Store
	apiSlices cache.Store // the EndpointSlices of default/kubernetes: the API server
	dirty     chan struct{}
	cancel    context.CancelFunc
	done      chan struct{}
	changed   broadcast

	mu       sync.Mutex // guards following
	cur      Cluster
	book     map[netip.Addr]AddrOwner
	fromPods bool // pod subnets were guessed from pod IPs
	updated  bool // update has run once
}

// NewKubeSource starts the informers and returns once their caches hold the
// cluster, so Current is right from the start. Close stops them; so does ctx.
func NewKubeSource(ctx context.Context, logger *slog.Logger, client kubernetes.Interface) (*KubeSource, error) {
	logger = logger.With("subsystem", "kube")
	ctx, cancel := context.WithCancel(ctx)
	k := &KubeSource{logger: logger, dirty: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}

	all := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slim))
	// Host-network pods carry node IPs, not pod IPs: the API server drops them.
	podsOnly := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slim),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.hostNetwork=false" }))
	apiServer := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "kubernetes.io/service-name=kubernetes" }))
	k.factories = []informers.SharedInformerFactory{all, podsOnly, apiServer}

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.markDirty() },
		UpdateFunc: func(any, any) { k.markDirty() },
		DeleteFunc: func(any) { k.markDirty() },
	}
	var synced []cache.InformerSynced
	var werr error
	watch := func(inf cache.SharedIndexInformer) cache.Store {
		reg, err := inf.AddEventHandler(handler)
		if err != nil { // only for an informer already stopped
			werr = errors.Join(werr, err)
		} else {
			synced = append(synced, reg.HasSynced)
		}
		return inf.GetStore()
	}
	k.nodes = watch(all.Core().V1().Nodes().Informer())
	k.spaces = watch(all.Core().V1().Namespaces().Informer())
	k.pods = watch(podsOnly.Core().V1().Pods().Informer())
	k.services = watch(all.Core().V1().Services().Informer())
	k.apiSlices = watch(apiServer.Discovery().V1().EndpointSlices().Informer())
	switch served, err := serviceCIDRsServed(client); {
	case served:
		k.cidrs = watch(all.Networking().V1().ServiceCIDRs().Informer())
	case err != nil:
		logger.Warn("cannot tell whether the cluster serves ServiceCIDRs: laptops get no service subnets", "err", err)
	default:
		logger.Warn("the cluster has no ServiceCIDR API (networking.k8s.io/v1, Kubernetes 1.33+): laptops get no service subnets")
	}
	if werr != nil {
		k.stopInformers()
		return nil, fmt.Errorf("watch the cluster: %w", werr)
	}
	for _, f := range k.factories {
		f.Start(ctx.Done())
	}
	syncCtx, syncCancel := context.WithTimeout(ctx, kubeSyncTimeout)
	defer syncCancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), synced...) {
		k.stopInformers()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("watch the cluster: %w", err)
		}
		return nil, fmt.Errorf("list nodes, namespaces, pods, services, endpointslices and servicecidrs: no answer within %s (check that the manager's ServiceAccount may list and watch them)", kubeSyncTimeout)
	}
	k.update()
	go k.run(ctx)
	return k, nil
}

// serviceCIDRsServed asks discovery whether networking.k8s.io/v1 serves
// servicecidrs; a group version that is not served is no error.
func serviceCIDRsServed(client kubernetes.Interface) (bool, error) {
	list, err := client.Discovery().ServerResourcesForGroupVersion(networkingv1.SchemeGroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", networkingv1.SchemeGroupVersion, err)
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" }), nil
}

// Current implements ClusterSource.
func (k *KubeSource) Current() Cluster {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Changed implements ClusterSource.
func (k *KubeSource) Changed() <-chan struct{} { return k.changed.wait() }

// Close stops the informers and waits for every goroutine of k.
func (k *KubeSource) Close() {
	k.stopInformers()
	<-k.done
}

// stopInformers ends the informers and waits for their goroutines.
func (k *KubeSource) stopInformers() {
	k.cancel()
	for _, f := range k.factories {
		f.Shutdown()
	}
}

func (k *KubeSource) markDirty() {
	select {
	case k.dirty <- struct{}{}:
	default:
	}
}

// run recomputes the cluster after events, at most once per kubeDebounce.
func (k *KubeSource) run(ctx context.Context) {
	defer close(k.done)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.dirty:
		}
		t.Reset(kubeDebounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		k.update()
	}
}

// update recomputes the cluster from the caches and wakes the watchers if
// it changed.
func (k *KubeSource) update() {
	c := Cluster{
		ServiceSubnets: k.serviceSubnets(),
		Namespaces:     k.namespaces(),
	}
	var fromPods bool
	c.PodSubnets, fromPods = k.podSubnets()

	book := k.addressBook()
	k.mu.Lock()
	prev, prevFromPods, first := k.cur, k.fromPods, !k.updated
	k.cur, k.fromPods, k.updated, k.book = c, fromPods, true, book
	k.mu.Unlock()
	if !first && prev.Equal(c) {
		return
	}
	if fromPods && (first || !prevFromPods) {
		k.logger.Info("no node has spec.podCIDRs: pod subnets are guessed from pod IPs")
	}
	if k.cidrs != nil && len(c.ServiceSubnets) == 0 && (first || len(prev.ServiceSubnets) > 0) {
		k.logger.Warn("no ServiceCIDR object lists a CIDR: laptops get no service subnets")
	}
	k.logger.Info("cluster changed", "service_subnets", c.ServiceSubnets, "pod_subnets", c.PodSubnets, "namespaces", len(c.Namespaces))
	k.changed.notify()
}

func (k *KubeSource) serviceSubnets() []netip.Prefix {
	if k.cidrs == nil {
		return nil
	}
	var ps []netip.Prefix
	for _, o := range k.cidrs.List() {
		sc, ok := o.(*networkingv1.ServiceCIDR)
		if !ok {
			continue
		}
		for _, s := range sc.Spec.CIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				ps = append(ps, p)
			}
		}
	}
	return compact(ps)
}

// podSubnets returns the nodes' podCIDRs, or when no node has any, subnets
// covering the pods' IPs (and true).
func (k *KubeSource) podSubnets() ([]netip.Prefix, bool) {
	var ps []netip.Prefix
	for _, o := range k.nodes.List() {
		n, ok := o.(*corev1.Node)
		if !ok {
			continue
		}
		for _, s := range n.Spec.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				ps = append(ps, p)
			}
		}
	}
	if len(ps) > 0 {
		return compact(ps), false
	}
	var addrs []netip.Addr
	for _, o := range k.pods.List() {
		p, ok := o.(*corev1.Pod)
		if !ok || p.Spec.HostNetwork { // fake clientsets ignore field selectors
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				addrs = append(addrs, a)
			}
		}
	}
	return coverAddrs(addrs), true
}

func (k *KubeSource) namespaces() []string {
	var names []string
	for _, o := range k.spaces.List() {
		if ns, ok := o.(*corev1.Namespace); ok {
			names = append(names, ns.Name)
		}
	}
	slices.Sort(names)
	return names
}

// slim keeps only the fields the manager reads, so caching every pod of a
// large cluster stays cheap. It is idempotent, as informers require.
func slim(obj any) (any, error) {
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: meta(o.ObjectMeta),
			Spec:       corev1.PodSpec{HostNetwork: o.Spec.HostNetwork},
			Status:     corev1.PodStatus{PodIPs: o.Status.PodIPs, Phase: o.Status.Phase},
		}, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: meta(o.ObjectMeta), Spec: corev1.NodeSpec{PodCIDRs: o.Spec.PodCIDRs},
			Status: corev1.NodeStatus{Addresses: o.Status.Addresses}}, nil
	case *corev1.Service:
		return &corev1.Service{ObjectMeta: meta(o.ObjectMeta), Spec: corev1.ServiceSpec{ClusterIPs: o.Spec.ClusterIPs, Selector: o.Spec.Selector}}, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: meta(o.ObjectMeta)}, nil
	}
	return obj, nil
}
