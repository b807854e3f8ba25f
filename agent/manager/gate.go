package manager

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// A session from a pod is a sidecar or nothing: it may only watch its
// workload's intercepts (after its token review) and carry the connections
// it captured. Everything a laptop does (streams into the cluster, the
// cluster's subnets and namespaces, DNS, the intercept list) is refused to
// it, so no workload can use the manager to reach what its own network
// policies keep it from, or learn who intercepts what.
var podMethods = map[string]bool{
	managerpb.Manager_WatchIntercepts_FullMethodName: true,
}

// A laptop's session makes its calls; a sidecar's WatchIntercepts is
// refused to it (the set holds every user's header values) unless tests
// allow loopback sidecars.
var laptopMethods = map[string]bool{
	managerpb.Manager_Challenge_FullMethodName:       true,
	managerpb.Manager_Hello_FullMethodName:           true,
	managerpb.Manager_WatchCluster_FullMethodName:    true,
	managerpb.Manager_Resolve_FullMethodName:         true,
	managerpb.Manager_CreateIntercept_FullMethodName: true,
	managerpb.Manager_RemoveIntercept_FullMethodName: true,
	managerpb.Manager_ListIntercepts_FullMethodName:  true,
	managerpb.Manager_WireGuard_FullMethodName:       true,
}

// Calls that cost the API server work (a review of a proof or a token) are
// rate-limited per peer: per pod address for sidecars, per session for
// laptops (they all come from the port-forward's loopback).
var limitedMethods = map[string]bool{
	managerpb.Manager_Hello_FullMethodName:           true,
	managerpb.Manager_WatchIntercepts_FullMethodName: true,
	managerpb.Manager_WireGuard_FullMethodName:       true,
}

// gate refuses a call the calling session's kind may not make.
func (m *Manager) gate(ctx context.Context, method string) error {
	s := sessionOf(ctx)
	if s == nil { // a control stream always comes with its session
		return status.Error(codes.Internal, "control call without a session")
	}
	allowed := laptopMethods[method] || (m.cfg.AllowLoopback && podMethods[method])
	if s.fromPod {
		allowed = podMethods[method]
	}
	if !allowed {
		m.metrics.refused.WithLabelValues(sessionKind(s), "method").Inc()
		s.badLog.Do(func() {
			s.log.Warn("refusing a call this kind of session may not make", "method", method, "from_pod", s.fromPod)
		})
		if s.fromPod {
			return status.Error(codes.PermissionDenied, "a session from a pod may only be a sidecar watching its workload")
		}
		return status.Error(codes.PermissionDenied, "only a sidecar may watch a workload's intercepts")
	}
	if limitedMethods[method] && !m.peerLimit.allow(s.peer, time.Now()) {
		m.metrics.refused.WithLabelValues(sessionKind(s), "rate").Inc()
		return status.Error(codes.ResourceExhausted, "too many hellos or watches from this peer; try again in a few seconds")
	}
	return nil
}

func sessionKind(s *session) string {
	if s.fromPod {
		return "pod"
	}
	return "laptop"
}

func (m *Manager) unaryGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := m.gate(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (m *Manager) streamGate(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := m.gate(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// peerLimiter keeps a token bucket per peer. Its map is bounded: past max
// peers it starts over, which only ever lets a burst through again.
type peerLimiter struct {
	every rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	peers map[string]*rate.Limiter
}

func (p *peerLimiter) allow(peer string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.peers[peer]
	if !ok {
		if p.peers == nil || len(p.peers) >= p.max {
			p.peers = map[string]*rate.Limiter{}
		}
		l = rate.NewLimiter(p.every, p.burst)
		p.peers[peer] = l
	}
	return l.AllowN(now, 1)
}
