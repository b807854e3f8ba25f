package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	authzv1 "k8s.io/api/authorization/v1"

	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/wgpath"
)

// AddrKind is what an address in the cluster belongs to.
type AddrKind int

const (
	AddrPod AddrKind = iota + 1
	AddrService
	AddrNode      // a node's own address: its kubelet, its host-network pods
	AddrAPIServer // the API server's Service address or endpoints
	// AddrUnselected is a Service without a selector: its endpoints can
	// name any address, so its own says nothing of where a dial goes.
	AddrUnselected
	// AddrAmbiguous is claimed by pods of two namespaces at once.
	AddrAmbiguous
)

func (k AddrKind) String() string {
	switch k {
	case AddrPod:
		return "pod"
	case AddrService:
		return "service"
	case AddrNode:
		return "node"
	case AddrAPIServer:
		return "API server"
	case AddrUnselected:
		return "Service without a selector"
	case AddrAmbiguous:
		return "address two namespaces claim"
	}
	return "unknown"
}

// AddrOwner says who holds an address: a pod's or Service's namespace.
type AddrOwner struct {
	Kind      AddrKind
	Namespace string // for pods and Services
}

// AddressBook maps the cluster's addresses to their owners; a
// ClusterSource that keeps one (KubeSource does) lets the manager apply
// the namespaces rule.
type AddressBook interface {
	Owner(netip.Addr) (AddrOwner, bool)
}

// errReach says why a destination is refused.
var errReach = errors.New("destination refused")

// reach is the one decision on every stream into the cluster: it takes the
// session (its kind and verified user) and the destination.
type reach struct {
	mode          string
	also          []netip.Prefix // --also-reach: reachable by every verified user
	allowLoopback bool
	self          []netip.Addr // the manager pod's own addresses
	book          AddressBook  // nil: addresses are not known (tests)
	authorize     authorizer   // nil: every user may (tests)
	access        *accessCache
	now           func() time.Time
}

// decide returns nil when s may dial dst, else errReach with why.
func (r *reach) decide(ctx context.Context, s *session, dst netip.Addr) error {
	a := dst.Unmap()
	refuse := func(why string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", errReach, a, fmt.Sprintf(why, args...))
	}
	if s.fromPod {
		return refuse("a session from a pod carries only a sidecar's intercepted connections")
	}
	if forbidden(a, r.allowLoopback) {
		return refuse("loopback, link-local, metadata, multicast and broadcast addresses are never dialed")
	}
	if slices.Contains(r.self, a) {
		return refuse("the manager's own pod")
	}
	if wgpath.TunnelAddr(a) {
		// Another laptop's end of the path: a way from one developer's
		// laptop to another's intercept port.
		return refuse("the WireGuard path's own addresses are never dialed")
	}
	var owner AddrOwner
	var known bool
	if r.book != nil {
		owner, known = r.book.Owner(a)
	}
	if known && (owner.Kind == AddrNode || owner.Kind == AddrAPIServer) {
		return refuse("a %s address is never dialed", owner.Kind)
	}
	id := s.identity()
	if id.User == "" && r.authorize != nil {
		return refuse("the session's user is not verified")
	}
	if r.book == nil {
		return nil // tests without a cluster
	}
	for _, p := range r.also {
		if p.Contains(a) {
			return nil
		}
	}
	if !known {
		return refuse("not a pod or Service address (an admin adds other networks with tunnel install --also-reach)")
	}
	if owner.Kind == AddrUnselected || owner.Kind == AddrAmbiguous {
		return refuse("a %s is not dialed (an admin allows its address with tunnel install --also-reach)", owner.Kind)
	}
	if r.mode == rpc.ReachCluster || r.authorize == nil {
		return nil
	}
	ok, err := r.access.allowed(accessKey{user: identityKey(id), ns: owner.Namespace, verb: "create pods/portforward"}, r.now(), func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return r.authorize(actx, id, authzv1.ResourceAttributes{
			Namespace: owner.Namespace, Verb: "create", Resource: "pods", Subresource: "portforward"})
	})
	if err != nil {
		return refuse("cannot ask the API server whether %s may: %v", id.User, err)
	}
	if !ok {
		return refuse("%s of namespace %s, where %s may not create pods/portforward", owner.Kind, owner.Namespace, id.User)
	}
	return nil
}

// identityKey is the cache key of a user: groups change what a user may.
func identityKey(id Identity) string {
	g := slices.Clone(id.Groups)
	slices.Sort(g)
	key := id.User + "\x00" + id.UID + "\x00" + strings.Join(g, "\x00")
	for _, k := range slices.Sorted(maps.Keys(id.Extra)) { // scopes narrow what a user may
		key += "\x00" + k + "=" + strings.Join(id.Extra[k], ",")
	}
	return key
}

// ownAddrs lists the addresses of the manager pod's interfaces: none of
// them is a destination (its session and metrics ports are its own).
func ownAddrs() []netip.Addr {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}
