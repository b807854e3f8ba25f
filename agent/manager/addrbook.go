package manager

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Owner implements AddressBook: whose an address is, as of the last update.
func (k *KubeSource) Owner(a netip.Addr) (AddrOwner, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	o, ok := k.book[a.Unmap()]
	return o, ok
}

// addressBook maps every pod and Service address to its namespace, and
// marks the nodes' and the API server's addresses, which no laptop dials
// whatever its rights. Only pods and Service cluster IPs give an address a
// namespace: an EndpointSlice can name any address, so whoever may write
// one in their namespace would otherwise make any address theirs. Nodes and
// the API server come last, so they win over a pod that claims their
// address (host-network pods are not watched).
func (k *KubeSource) addressBook() map[netip.Addr]AddrOwner {
	book := map[netip.Addr]AddrOwner{}
	add := func(s string, o AddrOwner) {
		if a, err := netip.ParseAddr(s); err == nil {
			book[a.Unmap()] = o
		}
	}
	// claim gives a pod's address its namespace; two namespaces claiming
	// one address (a finished pod's, reused) make it nobody's.
	claim := func(s string, o AddrOwner) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap()
		if prev, ok := book[a]; ok && prev != o {
			book[a] = AddrOwner{Kind: AddrAmbiguous}
			return
		}
		book[a] = o
	}
	for _, obj := range k.pods.List() {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue // a finished pod's address is free for the next
		}
		for _, ip := range p.Status.PodIPs {
			claim(ip.IP, AddrOwner{Kind: AddrPod, Namespace: p.Namespace})
		}
	}
	for _, obj := range k.services.List() {
		if s, ok := obj.(*corev1.Service); ok {
			kind := AddrService
			switch {
			case s.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes":
				kind = AddrAPIServer
			case len(s.Spec.Selector) == 0:
				// Its endpoints are whatever someone with rights in its
				// namespace writes: a kubelet, another namespace's pod.
				kind = AddrUnselected
			}
			for _, ip := range s.Spec.ClusterIPs {
				add(ip, AddrOwner{Kind: kind, Namespace: s.Namespace})
			}
		}
	}
	for _, obj := range k.nodes.List() {
		if n, ok := obj.(*corev1.Node); ok {
			for _, na := range n.Status.Addresses {
				if na.Type == corev1.NodeInternalIP || na.Type == corev1.NodeExternalIP {
					add(na.Address, AddrOwner{Kind: AddrNode})
				}
			}
		}
	}
	for _, obj := range k.apiSlices.List() {
		if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
			for _, ep := range es.Endpoints {
				for _, a := range ep.Addresses {
					add(a, AddrOwner{Kind: AddrAPIServer})
				}
			}
		}
	}
	return book
}
