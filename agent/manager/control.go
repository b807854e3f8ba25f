package manager

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
)

// control is the gRPC Manager service; one serves every session.
type control struct {
	managerpb.UnimplementedManagerServer
	m *Manager
}

// Hello names the manager's version and gives the laptop a session id for
// both sides' logs.
func (c *control) Hello(ctx context.Context, req *managerpb.HelloRequest) (*managerpb.HelloResponse, error) {
	s := sessionOf(ctx)
	if s == nil { // a control stream always comes with its session
		return nil, status.Error(codes.Internal, "control call without a session")
	}
	// A laptop of a version this manager does not serve hears which side
	// to upgrade, before anything else.
	if err := version.Compatible(req.GetClientVersion(), version.Get().Version); err != nil {
		s.log.Info("hello refused", "session_id", s.id, "client_version", req.GetClientVersion(), "err", err)
		// The proof is read (which deletes it) all the same: a laptop that
		// retries must not leave a CertificateSigningRequest each time.
		if proof := req.GetIdentityProof(); proof != "" && c.m.identify != nil {
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, _ = c.m.identify(ictx, proof)
			cancel()
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	user, why := "", "the laptop sent no proof of who it is"
	if proof := req.GetIdentityProof(); proof != "" && c.m.identify != nil {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		u, err := c.m.identify(ictx, proof)
		cancel()
		if err != nil {
			why = err.Error()
		} else {
			user, why = u, ""
		}
	}
	s.mu.Lock()
	s.user, s.host, s.why = user, req.GetHost(), why
	s.mu.Unlock()
	s.log.Info("hello", "session_id", s.id, "user", user, "claimed_user", req.GetUser(), "host", req.GetHost(),
		"client_version", req.GetClientVersion(), "unverified_because", why)
	return &managerpb.HelloResponse{ManagerVersion: version.Get().Version, SessionId: s.id, User: user, IdentityError: why}, nil
}

// sessionOf finds the session a control call came on.
func sessionOf(ctx context.Context) *session {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(sessionAddr); ok {
			return a.s
		}
	}
	return nil
}

// CreateIntercept records an intercept for the calling session.
func (c *control) CreateIntercept(ctx context.Context, spec *managerpb.InterceptSpec) (*managerpb.Intercept, error) {
	s := sessionOf(ctx)
	if s == nil {
		return nil, status.Error(codes.Internal, "control call without a session")
	}
	ic, err := c.m.intercepts.add(s, spec)
	if err != nil {
		return nil, grpcError(err)
	}
	s.log.Info("intercept created", "name", spec.GetName(), "namespace", spec.GetNamespace(),
		"workload", spec.GetWorkload(), "port", spec.GetPort(), "mode", spec.GetMode().String(), "id", ic.GetId())
	return ic, nil
}

// RemoveIntercept ends one of the caller's intercepts.
func (c *control) RemoveIntercept(ctx context.Context, req *managerpb.RemoveInterceptRequest) (*managerpb.RemoveInterceptResponse, error) {
	s := sessionOf(ctx)
	if s == nil {
		return nil, status.Error(codes.Internal, "control call without a session")
	}
	if err := c.m.intercepts.remove(s, req.GetNamespace(), req.GetName()); err != nil {
		return nil, grpcError(err)
	}
	s.log.Info("intercept removed", "name", req.GetName(), "namespace", req.GetNamespace())
	return &managerpb.RemoveInterceptResponse{}, nil
}

// ListIntercepts lists intercepts; others' header values are withheld.
func (c *control) ListIntercepts(ctx context.Context, req *managerpb.ListInterceptsRequest) (*managerpb.ListInterceptsResponse, error) {
	return &managerpb.ListInterceptsResponse{Intercepts: c.m.intercepts.list(sessionOf(ctx), req.GetNamespace())}, nil
}

// WatchIntercepts sends a sidecar the intercepts on its workload, at once
// and after every change, until the sidecar goes.
func (c *control) WatchIntercepts(req *managerpb.WatchInterceptsRequest, stream managerpb.Manager_WatchInterceptsServer) error {
	ctx := stream.Context()
	s := sessionOf(ctx)
	if s == nil {
		return status.Error(codes.Internal, "control call without a session")
	}
	// Only the workload's own sidecars watch: the set holds every user's
	// header values, and a watcher's streams reach the laptops.
	if !s.fromPod && !c.m.cfg.AllowLoopback {
		return status.Error(codes.PermissionDenied, "only a sidecar may watch a workload's intercepts")
	}
	if c.m.verifySidecar != nil {
		vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.m.verifySidecar(vctx, req.GetToken(), req.GetNamespace(), req.GetWorkload())
		cancel()
		if err != nil {
			s.log.Warn("refusing a sidecar", "namespace", req.GetNamespace(), "workload", req.GetWorkload(), "pod", req.GetPod(), "err", err)
			return status.Error(codes.PermissionDenied, err.Error())
		}
	}
	// A sidecar older than the versions rule sends none; the manager serves
	// it, as it did before (an upgrade replaces it at the next intercept).
	if v := req.GetSidecarVersion(); v != "" {
		if err := version.Compatible(v, version.Get().Version); err != nil {
			s.log.Warn("refusing a sidecar of another version", "namespace", req.GetNamespace(), "workload", req.GetWorkload(), "pod", req.GetPod(), "sidecar_version", v)
			return status.Error(codes.FailedPrecondition, err.Error())
		}
	}
	s.mu.Lock()
	s.sidecarOf = req.GetNamespace() + "/" + req.GetWorkload()
	s.mu.Unlock()
	s.log.Info("sidecar watching", "namespace", req.GetNamespace(), "workload", req.GetWorkload(), "pod", req.GetPod(), "sidecar_version", req.GetSidecarVersion())
	var last *managerpb.InterceptSet
	for {
		ics, changed := c.m.intercepts.workload(req.GetNamespace(), req.GetWorkload())
		set := &managerpb.InterceptSet{Intercepts: ics}
		if last == nil || !proto.Equal(last, set) {
			if err := stream.Send(set); err != nil {
				return err
			}
			last = set
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// WatchCluster sends the cluster at once, then on every change that alters
// what the laptop sees, until the laptop goes or the server stops.
func (c *control) WatchCluster(_ *managerpb.WatchClusterRequest, stream managerpb.Manager_WatchClusterServer) error {
	ctx := stream.Context()
	var last *managerpb.ClusterInfo
	for {
		changed := c.m.cluster.Changed() // before Current: a change in between is not lost
		info := c.m.clusterInfo(c.m.cluster.Current())
		if last == nil || !proto.Equal(last, info) {
			if err := stream.Send(info); err != nil {
				return err
			}
			last = info
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// Resolve forwards one DNS query to the cluster's nameservers.
func (c *control) Resolve(ctx context.Context, req *managerpb.ResolveRequest) (*managerpb.ResolveResponse, error) {
	start := time.Now()
	ans, err := c.m.dns.forward(ctx, req.GetQuery())
	c.m.metrics.dnsLatency.Observe(time.Since(start).Seconds())
	c.m.metrics.dnsQueries.WithLabelValues(resolveResult(err)).Inc()
	if err != nil {
		c.m.logger.Debug("resolve failed", "err", err)
		return nil, grpcError(err)
	}
	return &managerpb.ResolveResponse{Answer: ans}, nil
}

func resolveResult(err error) string {
	switch {
	case err == nil:
		return "answered"
	case errors.Is(err, errBadQuery):
		return "bad_query"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "failed"
}

// grpcError maps the manager's errors to gRPC codes, in this one place.
func grpcError(err error) error {
	switch {
	case errors.Is(err, errBadQuery):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, errNoAnswer):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, errInterceptConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, errInterceptNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, errInterceptNotYours):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, errInterceptNotVerified):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, errInterceptInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// clusterInfo is what WatchCluster sends for c.
func (m *Manager) clusterInfo(c Cluster) *managerpb.ClusterInfo {
	info := &managerpb.ClusterInfo{
		ClusterDomain: m.dns.domain,
		Namespaces:    c.Namespaces,
	}
	for _, p := range c.ServiceSubnets {
		info.ServiceSubnets = append(info.ServiceSubnets, p.String())
	}
	for _, p := range c.PodSubnets {
		info.PodSubnets = append(info.PodSubnets, p.String())
	}
	for _, s := range m.dns.servers {
		info.DnsServers = append(info.DnsServers, s.Addr().String())
	}
	return info
}
