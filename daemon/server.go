package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"slices"
	"tunnel.dev/tunnel/dns"
	"tunnel.dev/tunnel/preview"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/tun"
	"tunnel.dev/tunnel/version"
)

// Daemon serves the CLI on a unix socket and owns at most one connection.
type Daemon struct {
	daemonpb.UnimplementedDaemonServer
	log    *slog.Logger
	opt    Options
	caller Caller

	mu   sync.Mutex // guards conn
	conn *connection

	// live is conn for the metrics, which must not wait on mu: Connect
	// holds it while it dials.
	live atomic.Pointer[connection]

	quitOnce sync.Once
	quit     chan struct{}

	// left are what intercepts of this daemon changed in the cluster
	// (workloads replaced, preview routes), until put back.
	left *leftovers
}

// Run is `tunnel daemon`: it takes the namespace's lock, repairs what a
// crashed daemon left, serves until Quit or ctx ends, and restores
// everything on the way out. group, when not -1, may also use the socket.
// Metrics are served on metricsAddr ("" for none) while it runs.
func Run(ctx context.Context, logger *slog.Logger, opt Options, caller Caller, group int, metricsAddr string) error {
	if os.Geteuid() != 0 {
		return errors.New("the tunnel daemon needs root to create a TUN device and change routes and DNS: run it with sudo")
	}
	if err := os.MkdirAll(opt.RunDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(opt.RunDir, "daemon.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := lockExclusive(lock); err != nil {
		return fmt.Errorf("a tunnel daemon already runs for this network (lock %s)", lock.Name())
	}
	// The lock file names the daemon, for people and tests that look.
	_ = lock.Truncate(0)
	_, _ = fmt.Fprintf(lock, "%d\n", os.Getpid())
	if _, err := Repair(logger, opt); err != nil {
		return err
	}
	metrics, err := listenMetrics(logger, metricsAddr)
	if err != nil {
		return err
	}
	defer metrics.close()

	ln, err := listenSocket(logger, opt.RunDir, caller, group)
	if err != nil {
		return err
	}
	sock := ln.Addr().String()

	dnsLatency, observe := newDNSLatency()
	opt.DNSObserve = observe
	d := &Daemon{log: logger, opt: opt, caller: caller, quit: make(chan struct{}),
		left: &leftovers{path: filepath.Join(opt.RunDir, "replaced.json"), log: logger.With("subsystem", "replace")}}
	metrics.serve(metricsHandler(d.metricsSnapshot, dnsLatency))
	srv := grpc.NewServer()
	daemonpb.RegisterDaemonServer(srv, d)
	go func() {
		select {
		case <-ctx.Done():
		case <-d.quit:
		}
		d.disconnect()
		srv.GracefulStop()
	}()
	logger.Info("daemon serving", "socket", sock, "uid", caller.UID)
	err = srv.Serve(ln)
	d.disconnect()
	os.RemoveAll(filepath.Dir(sock)) // the socket and its folder: nobody serves them now
	return err
}

// listenSocket makes the daemon's socket inside a folder only the caller
// (and the group, if one was named) may enter, so the socket is never
// reachable by others, not even between its creation and its chmod; and
// every connection is checked against the kernel's word of who it is.
func listenSocket(logger *slog.Logger, runDir string, caller Caller, group int) (net.Listener, error) {
	sock := daemonpb.SocketIn(runDir)
	dir := filepath.Dir(sock)
	dirMode, sockMode, gid := os.FileMode(0o700), os.FileMode(0o600), caller.GID
	if group >= 0 {
		dirMode, sockMode, gid = 0o750, 0o660, group
	}
	_ = os.RemoveAll(dir) // the lock says no daemon serves it
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make the socket's folder: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	for _, step := range []func() error{
		func() error { return os.Chown(sock, caller.UID, gid) },
		func() error { return os.Chmod(sock, sockMode) },
		func() error { return os.Chown(dir, caller.UID, gid) },
		func() error { return os.Chmod(dir, dirMode) },
	} {
		if err := step(); err != nil {
			ln.Close()
			return nil, fmt.Errorf("give the socket to its user: %w", err)
		}
	}
	return &peerListener{Listener: ln, caller: caller, group: group, log: logger,
		warn: rate.Sometimes{First: 3, Interval: time.Minute}}, nil
}

// callerOf is the local user a call came from: the user whose credential
// plugins a kubeconfig of theirs runs as (with --group, not always the
// daemon's first user).
func (d *Daemon) callerOf(ctx context.Context) Caller {
	if p, ok := grpcpeer.FromContext(ctx); ok {
		if a, ok := p.Addr.(peerAddr); ok && a.p.Known {
			return Caller{UID: a.p.UID, GID: a.p.GID}
		}
	}
	return d.caller
}

// Repair undoes what a daemon that died without quitting left: the TUN
// device and its routes die with the process, the DNS settings do not. It
// returns what it repaired, in sentences for the user.
func Repair(logger *slog.Logger, opt Options) ([]string, error) {
	repaired, err := dns.RepairDirect(logger, dns.OSFS{}, opt.ResolvConf, daemonpb.ResolvBackup(opt.RunDir))
	if err != nil {
		return nil, fmt.Errorf("repair DNS settings a crashed daemon left: %w", err)
	}
	if !repaired {
		return nil, nil
	}
	return []string{fmt.Sprintf("Restored %s as it was before tunnel connected: a daemon that stopped without quitting had left the cluster's resolver in it.", opt.ResolvConf)}, nil
}

func (d *Daemon) Connect(ctx context.Context, req *daemonpb.ConnectRequest) (*daemonpb.StatusResponse, error) {
	st, c, err := d.connect(ctx, req)
	if err != nil || c == nil {
		return st, err
	}
	// A daemon of this machine that died with workloads replaced left
	// them written down: no intercept of a new session holds them. Put
	// back outside the lock: a rollout takes a while, and status and the
	// other verbs must still answer.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replaceTimeout)
	defer cancel()
	done, err := d.left.putBack(pctx, c.sess.workloads, func(r leftover) bool { return r.Server == c.server })
	if err != nil {
		d.log.Warn("put back replaced workloads", "err", err)
		done = append(done, fmt.Sprintf("Could not put back what an earlier intercept of this machine replaced (%v); `tunnel uninstall --agent WORKLOAD` does.", err))
	}
	st.Repaired = done
	return st, nil
}

// connect connects, under the lock; c is the new connection (nil when it
// was connected already).
func (d *Daemon) connect(ctx context.Context, req *daemonpb.ConnectRequest) (*daemonpb.StatusResponse, *connection, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	caller := d.callerOf(ctx)
	if d.conn != nil {
		rc, kctx, err := restConfig(req.Kubeconfig, req.Context, caller)
		if err != nil {
			return nil, nil, toStatus(err)
		}
		if rc.Host == d.conn.server && kctx == d.conn.context && req.Namespace == d.conn.req.Namespace {
			return d.statusLocked(), nil, nil // connected already, to the same place
		}
		return nil, nil, status.Errorf(codes.FailedPrecondition,
			"already connected to %s (context %s, namespace %s): run `tunnel quit` before connecting elsewhere",
			d.conn.server, d.conn.context, d.conn.req.Namespace)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := open(ctx, d.log, d.opt, caller, req)
	if err != nil {
		d.log.Warn("connect failed", "err", err)
		return nil, nil, toStatus(err)
	}
	d.conn = c
	d.live.Store(c)
	d.log.Info("connected", "cluster", c.server, "context", c.context, "namespace", req.Namespace)
	return d.statusLocked(), c, nil
}

func (d *Daemon) Status(context.Context, *daemonpb.StatusRequest) (*daemonpb.StatusResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.statusLocked(), nil
}

func (d *Daemon) Quit(ctx context.Context, _ *daemonpb.QuitRequest) (*daemonpb.QuitResponse, error) {
	perr := d.putBackAll(ctx)
	err := d.disconnect()
	d.quitOnce.Do(func() { close(d.quit) })
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if perr != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "disconnected, but %v; `tunnel uninstall --agent WORKLOAD` puts it back", perr)
	}
	return &daemonpb.QuitResponse{}, nil
}

// server is the connected API server's URL ("" when not connected).
func (d *Daemon) server() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		return ""
	}
	return d.conn.server
}

// putBackAll restores every workload this connection's intercepts
// replaced, before they end with it.
func (d *Daemon) putBackAll(ctx context.Context) error {
	d.mu.Lock()
	c := d.conn
	d.mu.Unlock()
	if c == nil {
		return nil
	}
	_, err := d.left.putBack(ctx, c.sess.workloads, func(r leftover) bool { return r.Server == c.server })
	if err != nil {
		d.log.Warn("put back replaced workloads", "err", err)
	}
	return err
}

func (d *Daemon) disconnect() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		return nil
	}
	d.live.Store(nil)
	err := d.conn.close()
	d.conn = nil
	d.log.Info("disconnected", "err", err)
	return err
}

func (d *Daemon) statusLocked() *daemonpb.StatusResponse {
	c := d.conn
	if c == nil {
		return &daemonpb.StatusResponse{Session: "disconnected", DaemonVersion: version.Get().Version}
	}
	c.sess.mu.Lock()
	state, mgr, user := c.sess.state, c.sess.mgrVer, c.sess.user
	c.sess.mu.Unlock()
	c.mu.Lock()
	routes := make([]string, 0, len(c.routes))
	for _, r := range c.routes {
		routes = append(routes, r.String())
	}
	c.mu.Unlock()
	st := c.traffic()
	dnsState := proto.Clone(c.dnsState).(*daemonpb.DNSStatus)
	dnsState.Queries = c.resolver.Stats().Queries
	return &daemonpb.StatusResponse{
		Connected: true, Cluster: c.server, Context: c.context, Namespace: c.req.Namespace,
		Session: state, ManagerVersion: mgr, DaemonVersion: version.Get().Version, RoutedSubnets: routes, Dns: dnsState,
		Traffic: &daemonpb.Traffic{
			TcpFlowsActive: st.TCPActive, TcpFlowsTotal: st.TCPTotal,
			UdpFlowsActive: st.UDPActive, UdpFlowsTotal: st.UDPTotal,
			BytesSent: st.BytesSent, BytesReceived: st.BytesReceived, DialErrors: st.DialErrors, DialsRefused: st.DialsRefused,
		},
		Reconnects:     c.sess.reconnects.Load(),
		ConnectedSince: c.since.UTC().Format(time.RFC3339),
		User:           user,
		Intercepts:     c.sess.icpt.list(),
		Path:           c.wgPath.status(),
	}
}

// connected returns the connection's session with a live control client,
// or the one sentence a CLI verb that needs a connection shows.
func (d *Daemon) connected(ctx context.Context) (*session, managerpb.ManagerClient, error) {
	d.mu.Lock()
	c := d.conn
	d.mu.Unlock()
	if c == nil {
		return nil, nil, status.Error(codes.FailedPrecondition, "not connected to a cluster: run `tunnel connect` first")
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, ctl, err := c.sess.current(wctx)
	if err != nil {
		return nil, nil, status.Error(codes.Unavailable, err.Error())
	}
	return c.sess, ctl, nil
}

func (d *Daemon) Intercept(ctx context.Context, req *daemonpb.InterceptRequest) (*daemonpb.InterceptResponse, error) {
	s, ctl, err := d.connected(ctx)
	if err != nil {
		return nil, err
	}
	spec := req.GetSpec()
	// A replaced Job or CronJob is held by no port (spec.Port 0), and
	// nothing is sent to the laptop for it.
	if spec.GetPort() == 0 && !req.GetReplace() {
		return nil, status.Error(codes.InvalidArgument, "an intercept of no port only replaces a Job or CronJob: give --replace")
	}
	if (req.GetLocalPort() == 0 && spec.GetPort() != 0) || req.GetLocalPort() > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "local port %d is not a port number", req.GetLocalPort())
	}
	if req.GetReplace() && spec.GetMode() != managerpb.InterceptMode_GLOBAL {
		return nil, status.Error(codes.InvalidArgument, "a replacing intercept takes every request: it is global")
	}
	existed := slices.ContainsFunc(s.icpt.list(), func(ic *managerpb.Intercept) bool {
		return ic.GetSpec().GetNamespace() == spec.GetNamespace() && ic.GetSpec().GetName() == spec.GetName()
	})
	ic, err := s.icpt.add(ctx, ctl, spec, req.GetLocalPort())
	if status.Code(err) == codes.Unauthenticated {
		s.mu.Lock()
		perr := s.proofErr
		s.mu.Unlock()
		if perr != nil {
			return nil, status.Errorf(codes.PermissionDenied,
				"the manager cannot tell which Kubernetes user you are, because %v; an admin can allow it with `tunnel install --allow-user <you>`", perr)
		}
	}
	if err != nil {
		return nil, err // the manager's status, its sentence kept
	}
	if req.GetReplace() {
		rec := leftover{Server: d.server(), Namespace: spec.GetNamespace(), Workload: ic.GetSpec().GetWorkload(),
			Intercept: spec.GetName(), Holder: ic.GetUser() + "@" + ic.GetHost()}
		if err := d.left.replace(ctx, s.workloads, rec); err != nil {
			if !existed { // this call's intercept goes with its replace
				_ = d.leave(context.WithoutCancel(ctx), s, ctl, spec.GetNamespace(), spec.GetName())
			}
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
	}
	resp := &daemonpb.InterceptResponse{Intercept: ic, Probe: s.icpt.probe(ic.GetSpec().GetLaptopId())}
	if host := req.GetPreviewHost(); host != "" {
		url, err := d.openPreview(ctx, s, ic, req, host)
		if err != nil {
			if !existed {
				_ = d.leave(context.WithoutCancel(ctx), s, ctl, spec.GetNamespace(), spec.GetName())
			}
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		resp.PreviewUrl = url
	}
	return resp, nil
}

// openPreview opens ic's preview route for host, written down first so
// that whatever ends the intercept takes it away.
func (d *Daemon) openPreview(ctx context.Context, s *session, ic *managerpb.Intercept, req *daemonpb.InterceptRequest, host string) (string, error) {
	svc := req.GetService()
	spec := ic.GetSpec()
	if spec.GetMode() != managerpb.InterceptMode_PERSONAL {
		return "", errors.New("a preview URL opens a personal intercept: give --http-header")
	}
	if svc == "" {
		return "", errors.New("the request names no Service to preview")
	}
	rec := leftover{Server: d.server(), Namespace: spec.GetNamespace(), Workload: spec.GetWorkload(), Intercept: spec.GetName(),
		Holder: ic.GetUser() + "@" + ic.GetHost(), Preview: true}
	if err := d.left.record(rec); err != nil {
		return "", fmt.Errorf("write down the preview route: %w", err)
	}
	_, url, err := preview.Open(ctx, s.workloads.Dyn, preview.Spec{Namespace: spec.GetNamespace(), Service: svc, Intercept: spec.GetName(),
		Owner: rec.Holder, Host: host, Header: spec.GetHeaderName(), Value: spec.GetHeaderValue(),
		Port: int32(req.GetServicePort()), Domain: req.GetPreviewDomain()})
	if err != nil {
		// The record goes only once no route of it can be left: a
		// request cut after the route was made leaves one.
		if cerr := preview.Close(context.WithoutCancel(ctx), s.workloads.Dyn, spec.GetNamespace(), spec.GetName()); cerr == nil || errors.Is(cerr, preview.ErrNotOurs) {
			d.left.drop(rec)
		}
		return "", err
	}
	return url, nil
}

func (d *Daemon) Leave(ctx context.Context, req *daemonpb.LeaveRequest) (*daemonpb.LeaveResponse, error) {
	s, ctl, err := d.connected(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.leave(ctx, s, ctl, req.GetNamespace(), req.GetName()); err != nil {
		return nil, err
	}
	return &daemonpb.LeaveResponse{}, nil
}

// leave ends intercept ns/name. What it changed in the cluster goes
// first: a workload it replaced is put back (until it serves again, the
// laptop does) and its preview route is taken away.
func (d *Daemon) leave(ctx context.Context, s *session, ctl managerpb.ManagerClient, ns, name string) error {
	server := d.server()
	_, perr := d.left.putBack(ctx, s.workloads, func(r leftover) bool {
		return r.Server == server && r.Namespace == ns && r.Intercept == name
	})
	// A user can always leave: what could not be put back stays written
	// down for the next connect (or uninstall --agent).
	if err := s.icpt.remove(ctx, ctl, ns, name); err != nil {
		return err
	}
	if perr != nil {
		return status.Errorf(codes.FailedPrecondition, "intercept %s ended, but %v; the next connect tries again", name, perr)
	}
	return nil
}

func (d *Daemon) ListIntercepts(ctx context.Context, req *daemonpb.ListInterceptsRequest) (*daemonpb.ListInterceptsResponse, error) {
	_, ctl, err := d.connected(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := ctl.ListIntercepts(ctx, &managerpb.ListInterceptsRequest{Namespace: req.GetNamespace()})
	if err != nil {
		return nil, err
	}
	return &daemonpb.ListInterceptsResponse{Intercepts: resp.GetIntercepts()}, nil
}

// toStatus maps the errors a connect meets to gRPC codes in one place; the
// message stays the one sentence the user reads.
func toStatus(err error) error {
	var conflict *tun.ConflictError
	var skew *SkewError
	switch {
	case errors.As(err, &skew):
		return status.Error(codes.FailedPrecondition, skew.Sentence)
	case errors.As(err, &conflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrNoManager):
		return status.Error(codes.FailedPrecondition, err.Error()+": run `tunnel install` (or ask an admin to)")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the cluster did not answer in time: "+err.Error())
	case errors.Is(err, syscall.EPERM):
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
