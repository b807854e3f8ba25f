package manager

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	authzv1 "k8s.io/api/authorization/v1"

	"tunnel.dev/tunnel/access"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
	"tunnel.dev/tunnel/workload"
)

// control is the gRPC Manager service; one serves every session.
type control struct {
	managerpb.UnimplementedManagerServer
	m *Manager
}

// Challenge gives the session the nonce its Hello must sign, once.
func (c *control) Challenge(ctx context.Context, _ *managerpb.ChallengeRequest) (*managerpb.ChallengeResponse, error) {
	s := sessionOf(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nonce != nil {
		return nil, status.Error(codes.FailedPrecondition, "the session has its challenge already")
	}
	s.nonce = make([]byte, 32)
	_, _ = rand.Read(s.nonce)
	return &managerpb.ChallengeResponse{Nonce: s.nonce}, nil
}

// Hello names the manager's version and gives the laptop a session id for
// both sides' logs; it verifies the session's user, once.
func (c *control) Hello(ctx context.Context, req *managerpb.HelloRequest) (*managerpb.HelloResponse, error) {
	s := sessionOf(ctx)
	s.mu.Lock()
	said := s.host != "" || s.ident.User != "" || s.why != ""
	nonce := s.nonce
	s.mu.Unlock()
	if said {
		return nil, status.Error(codes.FailedPrecondition, "the session has said hello already")
	}
	claim := proofClaim{Name: req.GetIdentityProof(), Nonce: nonce, Signature: req.GetIdentitySignature()}
	// A laptop of a version this manager does not serve hears which side
	// to upgrade, before anything else.
	if err := version.Compatible(req.GetClientVersion(), version.Get().Version); err != nil {
		s.log.Info("hello refused", "session_id", s.id, "client_version", req.GetClientVersion(), "err", err)
		// The proof is read (which deletes it) all the same: a laptop that
		// retries must not leave a CertificateSigningRequest each time.
		if claim.Name != "" && c.m.identify != nil {
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, _ = c.m.identify(ictx, claim)
			cancel()
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	var id Identity
	why := "the laptop sent no proof of who it is"
	if claim.Name != "" && c.m.identify != nil {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		got, err := c.m.identify(ictx, claim)
		cancel()
		if err != nil {
			why = err.Error()
		} else {
			id, why = got, ""
		}
	}
	s.mu.Lock()
	s.ident, s.host, s.why = id, req.GetHost(), why
	s.mu.Unlock()
	s.log.Info("hello", "session_id", s.id, "user", id.User, "groups", id.Groups, "claimed_user", req.GetUser(), "host", req.GetHost(),
		"client_version", req.GetClientVersion(), "unverified_because", why)
	return &managerpb.HelloResponse{ManagerVersion: version.Get().Version, SessionId: s.id, User: id.User, IdentityError: why}, nil
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

// WireGuard admits the calling session to the WireGuard path.
func (c *control) WireGuard(ctx context.Context, req *managerpb.WireGuardRequest) (*managerpb.WireGuardOffer, error) {
	return c.m.admitWireGuard(ctx, sessionOf(ctx), req.GetPublicKey())
}

// CreateIntercept records an intercept for the calling session.
func (c *control) CreateIntercept(ctx context.Context, spec *managerpb.InterceptSpec) (*managerpb.Intercept, error) {
	s := sessionOf(ctx)
	// The manager decides by the caller's own RBAC: a caller need not use
	// the CLI, which asked too. A mirror sees every request, so it needs
	// what a global intercept needs.
	ref, err := workload.ParseRef(spec.GetWorkload())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// One spelling per workload ("sts/db" is "statefulset/db"), so that
	// clashes are found and its sidecars match.
	spec.Workload = ref.String()
	if id := s.identity(); id.User != "" {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.m.checkRights(actx, id, spec.GetNamespace(), "an intercept there needs", access.InterceptRights(ref.Kind, ref.Name))
		cancel()
		if err != nil {
			s.log.Info("intercept refused", "name", spec.GetName(), "namespace", spec.GetNamespace(), "user", id.User, "err", err)
			c.m.metrics.refused.WithLabelValues(sessionKind(s), "rights").Inc()
			return nil, grpcError(err)
		}
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
	// Giving traffic back needs no rights beyond owning the intercept: a
	// user whose rights were taken away must still be able to leave.
	s := sessionOf(ctx)
	if err := c.m.intercepts.remove(s, req.GetNamespace(), req.GetName()); err != nil {
		return nil, grpcError(err)
	}
	s.log.Info("intercept removed", "name", req.GetName(), "namespace", req.GetNamespace())
	return &managerpb.RemoveInterceptResponse{}, nil
}

// ListIntercepts lists intercepts; others' header values are withheld,
// and others' intercepts are shown only in namespaces where the caller may
// list pods (who intercepts what is the namespace's business).
func (c *control) ListIntercepts(ctx context.Context, req *managerpb.ListInterceptsRequest) (*managerpb.ListInterceptsResponse, error) {
	s := sessionOf(ctx)
	all := c.m.intercepts.list(s, req.GetNamespace())
	id := s.identity()
	if c.m.authorize == nil {
		return &managerpb.ListInterceptsResponse{Intercepts: all}, nil
	}
	var out []*managerpb.Intercept
	for _, ic := range all {
		if id.User != "" && ic.GetUser() == id.User {
			out = append(out, ic)
			continue
		}
		if id.User == "" {
			continue
		}
		ns := ic.GetSpec().GetNamespace()
		ok, err := c.m.reach.access.allowed(accessKey{user: identityKey(id), ns: ns, verb: "list pods"}, time.Now(), func() (bool, error) {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return c.m.authorize(actx, id, authzv1.ResourceAttributes{Namespace: ns, Verb: "list", Resource: "pods"})
		})
		if err == nil && ok {
			out = append(out, ic)
		}
	}
	return &managerpb.ListInterceptsResponse{Intercepts: out}, nil
}

// WatchIntercepts sends a sidecar the intercepts on its workload, at once
// and after every change, until the sidecar goes.
func (c *control) WatchIntercepts(req *managerpb.WatchInterceptsRequest, stream managerpb.Manager_WatchInterceptsServer) error {
	ctx := stream.Context()
	s := sessionOf(ctx) // a pod's session or, in tests, a loopback one (gate)
	var recheck func(context.Context) error
	if c.m.verifySidecar != nil {
		vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		recheck, err = c.m.verifySidecar(vctx, req.GetToken(), req.GetNamespace(), req.GetWorkload())
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
	watches := req.GetNamespace() + "/" + req.GetWorkload()
	s.mu.Lock()
	s.sidecarOf = watches
	s.mu.Unlock()
	defer func() { // its streams reach the laptops only while it watches
		s.mu.Lock()
		if s.sidecarOf == watches {
			s.sidecarOf = ""
		}
		s.mu.Unlock()
	}()
	s.log.Info("sidecar watching", "namespace", req.GetNamespace(), "workload", req.GetWorkload(), "pod", req.GetPod(), "sidecar_version", req.GetSidecarVersion())
	// The pod is checked again while it watches: it may be deleted, or its
	// workload replaced, and its session must not outlive that.
	tick := time.NewTicker(c.m.cfg.SidecarRecheck)
	defer tick.Stop()
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
		case <-tick.C:
			if recheck == nil {
				continue
			}
			vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := recheck(vctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("a watching sidecar no longer checks out", "namespace", req.GetNamespace(), "workload", req.GetWorkload(), "pod", req.GetPod(), "err", err)
				return status.Error(codes.PermissionDenied, err.Error())
			}
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
	case errors.Is(err, errInterceptForbidden):
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
