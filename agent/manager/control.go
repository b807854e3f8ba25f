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
	id := rand.Text()
	from := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	c.m.logger.Info("hello", "session_id", id, "user", req.GetUser(), "host", req.GetHost(),
		"client_version", req.GetClientVersion(), "from", from)
	return &managerpb.HelloResponse{ManagerVersion: version.Get().Version, SessionId: id}, nil
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
