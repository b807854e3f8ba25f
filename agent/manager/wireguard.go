package manager

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/tun/netstack"
	"tunnel.dev/tunnel/wgpath"
)

// wireGuard is the manager's side of laptops' WireGuard path: the device,
// where laptops reach it, and which session each tunnel address is.
type wireGuard struct {
	srv       *wgpath.Server
	endpoints func(context.Context) ([]string, error)

	admit  sync.Mutex   // one admission at a time: a key is recorded before the next is added
	mu     sync.RWMutex // guards following; probes and dials read it
	byAddr map[netip.Addr]*session
	peers  map[*session]wgPeer
}

// wgPeer is what a session holds on the path: its key and its tunnel
// addresses.
type wgPeer struct {
	key          wgpath.Key
	addr4, addr6 netip.Addr
}

// useWireGuard starts the WireGuard path on UDP port; endpoints says where
// laptops reach it. Close stops it.
func (m *Manager) useWireGuard(port int, endpoints func(context.Context) ([]string, error)) error {
	srv, err := wgpath.NewServer(m.logger, port, wgDialer{m}, wgPendingTotal)
	if err != nil {
		return err
	}
	m.wg = &wireGuard{srv: srv, endpoints: endpoints, byAddr: map[netip.Addr]*session{},
		peers: map[*session]wgPeer{}}
	srv.ReportDialErrors(func(a netip.Addr) (failed, refused uint64) {
		m.wg.mu.RLock()
		s := m.wg.byAddr[a]
		m.wg.mu.RUnlock()
		if s == nil {
			return 0, 0
		}
		return s.wgFailed.Load(), s.wgRefused.Load()
	})
	pub := srv.PublicKey()
	m.logger.Info("serving the WireGuard path", "port", srv.Port(), "public_key", base64.StdEncoding.EncodeToString(pub[:]))
	return nil
}

// admitWireGuard gives a verified laptop session its place on the
// WireGuard path for as long as the session lives.
func (m *Manager) admitWireGuard(ctx context.Context, s *session, pub []byte) (*managerpb.WireGuardOffer, error) {
	if m.wg == nil {
		return nil, status.Error(codes.FailedPrecondition, "this manager offers no WireGuard path (tunnel install --wireguard nodeport or loadbalancer turns it on)")
	}
	if s.fromPod {
		return nil, status.Error(codes.PermissionDenied, "a session from a pod has no WireGuard path")
	}
	if s.identity().User == "" {
		return nil, status.Error(codes.PermissionDenied, "the session's user is not verified: no WireGuard path")
	}
	key, err := wgpath.ParseKey(pub)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	eps, err := m.wg.endpoints(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "find where laptops reach the WireGuard port: %v", err)
	}
	if len(eps) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "the WireGuard service has no address yet (a load balancer still allocating, or no node with an address)")
	}
	// One key per session, for its whole life: a second key would free
	// the first one's address while connections dialed under it live on,
	// for another session to be given.
	m.wg.admit.Lock()
	defer m.wg.admit.Unlock()
	m.wg.mu.RLock()
	_, has := m.wg.peers[s]
	m.wg.mu.RUnlock()
	if has {
		return nil, status.Error(codes.FailedPrecondition, "this session has its WireGuard key already; a new session gets a new one")
	}
	a4, a6, err := m.wg.srv.Add(key)
	if err != nil {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	m.wg.mu.Lock()
	m.wg.byAddr[a4], m.wg.byAddr[a6], m.wg.peers[s] = s, s, wgPeer{key, a4, a6}
	m.wg.mu.Unlock()
	if s.ctx.Err() != nil { // the session ended meanwhile: its drop may have run first
		m.dropWireGuard(s)
		return nil, status.Error(codes.Canceled, "the session ended")
	}
	s.log.Info("admitted to the WireGuard path", "address", a4)
	pk := m.wg.srv.PublicKey()
	offer := &managerpb.WireGuardOffer{PublicKey: pk[:],
		Address: a4.String(), Address6: a6.String(), ServerAddress: wgpath.Server4.String()}
	offer.Endpoints = eps
	return offer, nil
}

// dropWireGuard removes s's key: from now on its packets get no answer.
// The flows it opened end with the session's context.
func (m *Manager) dropWireGuard(s *session) {
	if m.wg == nil {
		return
	}
	m.wg.mu.Lock()
	p, ok := m.wg.peers[s]
	if ok {
		delete(m.wg.peers, s)
		delete(m.wg.byAddr, p.addr4)
		delete(m.wg.byAddr, p.addr6)
	}
	m.wg.mu.Unlock()
	if ok {
		m.wg.srv.Remove(p.key)
	}
}

func (m *Manager) closeWireGuard() {
	if m.wg != nil {
		m.wg.srv.Close()
	}
}

// Connections of the WireGuard path waiting for their dial: per session,
// and in all (the stack's own bound), so that one user's few sessions
// dialing silent ports cannot hold them all. Past either, a SYN goes
// unanswered and the laptop sends it again a second later: a thousand
// connections opened at once all start, those past the bound a second
// later.
const (
	wgPendingPerSession = 256
	wgPendingTotal      = 4096
)

// wgDialer dials for the WireGuard path's userspace stack: the connection's
// source address names the session, and from there it is the
// port-forward path's way, the same reach decision and dial, counted
// against the same stream slots.
type wgDialer struct{ m *Manager }

func (d wgDialer) DialStream(ctx context.Context, kind rpc.Kind, src, dst netip.AddrPort) (net.Conn, error) {
	m := d.m
	m.wg.mu.RLock()
	s := m.wg.byAddr[src.Addr()]
	m.wg.mu.RUnlock()
	if s == nil {
		return nil, rpc.StatusForbidden // a session that ended; its peer is going
	}
	// The stack holds at most wgPendingTotal handshakes for all sessions;
	// one session may hold a few of them, so its SYNs to silent ports
	// cannot keep the others' connections from starting.
	if s.wgPending.Add(1) > wgPendingPerSession {
		s.wgPending.Add(-1)
		m.metrics.refused.WithLabelValues(sessionKind(s), "limit").Inc()
		return nil, netstack.ErrBusy // the laptop sends the SYN again
	}
	defer s.wgPending.Add(-1)
	release, ok := m.openStream(s)
	if !ok {
		s.wgFailed.Add(1)
		return nil, rpc.StatusUnreachable
	}
	h := rpc.Header{Kind: kind, Dst: dst}
	m.metrics.streams.WithLabelValues(kind.String()).Inc()
	switch kind {
	case rpc.KindTCP:
		log := s.log.With("dst", dst.String(), "path", "wireguard")
		c, st := m.dialStream(ctx, s, log, "tcp", h, m.dialTCP)
		if st != rpc.StatusOK {
			release()
			s.wgFailed.Add(1)
			if st == rpc.StatusForbidden {
				s.wgRefused.Add(1)
			}
			return nil, st
		}
		open := s.wgOpen.Add(1)
		sc := endWithSession(s, c, func() { s.wgOpen.Add(-1); release() })
		sc.sendBuffer = wgSendBuffer(open)
		return sc, nil
	case rpc.KindUDP:
		// The stack wants datagrams framed as on a stream: the stream
		// path's own relay serves one end of a pipe.
		mine, theirs := net.Pipe()
		go func() {
			defer release()
			m.serveUDP(s.ctx, s, theirs, h)
		}()
		if err := rpc.ReadStatus(mine); err != nil {
			mine.Close()
			return nil, err
		}
		return mine, nil
	}
	release()
	return nil, fmt.Errorf("the WireGuard path carries TCP and UDP, not %s", kind)
}

// laptopDialTimeout bounds the dial of an intercepted connection to a
// laptop over WireGuard; past it the session's stream carries it.
const laptopDialTimeout = time.Second

// laptopRetryAfter is how long a session's intercepted connections take
// its stream after a dial over WireGuard failed.
const laptopRetryAfter = 30 * time.Second

// laptopOverWireGuard opens a connection to s's laptop over its WireGuard
// path, when the laptop's probes show the path up; nil otherwise, and the
// caller takes the session's stream.
func (m *Manager) laptopOverWireGuard(ctx context.Context, s *session) net.Conn {
	if m.wg == nil {
		return nil
	}
	m.wg.mu.RLock()
	p, ok := m.wg.peers[s]
	a := p.addr4
	m.wg.mu.RUnlock()
	if !ok || !m.wg.srv.Live(a) || time.Now().UnixNano() < s.wgLaptopAfter.Load() {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, laptopDialTimeout)
	defer cancel()
	c, err := m.wg.srv.DialLaptop(dctx, a)
	if err != nil {
		// A path that carries probes but not connections: the session's
		// stream carries them for a while, not a second late each.
		s.wgLaptopAfter.Store(time.Now().Add(laptopRetryAfter).UnixNano())
		s.log.Info("open an intercepted connection over WireGuard: the session's stream carries them for a while", "err", err)
		return nil
	}
	// When the session ends its peer goes: a reset now, not minutes of
	// resends to a laptop that can no longer answer.
	stop := context.AfterFunc(s.ctx, c.Abort)
	quiet := m.abortWhenSilent(c, a)
	return &sessionConn{Conn: c, done: func() { stop(); quiet() }}
}

// silentCheck is how often a connection to a laptop over WireGuard asks
// whether the laptop still probes.
const silentCheck = 500 * time.Millisecond

// abortWhenSilent resets c once the laptop at tunnel address a has stopped
// probing (its UDP blocked, its Wi-Fi gone): TCP would resend into the
// dead path for minutes, while the sidecar's requests on c hang. The
// sidecar's next connection takes the session's stream. Call the returned
// function when c closes.
func (m *Manager) abortWhenSilent(c *netstack.DialedConn, a netip.Addr) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(silentCheck)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if !m.wg.srv.Heard(a) {
					c.Abort()
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// A session's connections over WireGuard share a budget for what the
// manager keeps unacknowledged for them: the first few get 4 MiB each
// (80 MB/s at a 50 ms round trip), and as more are open each new one
// gets its share, down to 128 KiB. A session's 1024 connections hold at
// most about 180 MiB, where 1 MiB each was 1 GiB, and a single download
// is no longer bound to 50 MB/s at 20 ms.
const (
	wgSendBudget = 16 << 20
	wgSendMax    = 4 << 20
	wgSendMin    = 128 << 10
)

// wgSendBuffer is the send buffer of a session's open-th connection.
func wgSendBuffer(open int32) int {
	return min(max(wgSendBudget/int(max(open, 1)), wgSendMin), wgSendMax)
}

// endWithSession closes c when s ends, and gives back its slot once.
func endWithSession(s *session, c net.Conn, release func()) *sessionConn {
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	return &sessionConn{Conn: c, done: func() { stop(); release() }}
}

type sessionConn struct {
	net.Conn
	once       sync.Once
	done       func()
	sendBuffer int // for the stack: what to keep unacknowledged for it (0: its default)
}

// SendBuffer tells the stack what to keep unacknowledged for the
// connection.
func (c *sessionConn) SendBuffer() int { return c.sendBuffer }

func (c *sessionConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

// CloseWrite passes the application's half-close on to the destination.
func (c *sessionConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// serviceEndpoints says where laptops reach the WireGuard port, from its
// Service: a load balancer's addresses, or for a NodePort the nodes'
// external addresses, then their internal ones (a laptop on the nodes'
// network or VPN), a few of each. Read from the API server's cache.
func serviceEndpoints(client kubernetes.Interface, ns, name string) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		svc, err := client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{ResourceVersion: "0"})
		if err != nil {
			return nil, err
		}
		if len(svc.Spec.Ports) == 0 {
			return nil, fmt.Errorf("service %s/%s has no port", ns, name)
		}
		port := svc.Spec.Ports[0]
		var out []string
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			for _, in := range svc.Status.LoadBalancer.Ingress {
				host := in.IP
				if host == "" {
					host = in.Hostname
				}
				if host != "" {
					out = append(out, net.JoinHostPort(host, strconv.Itoa(int(port.Port))))
				}
			}
			return out, nil
		}
		if port.NodePort == 0 {
			return nil, fmt.Errorf("service %s/%s has no node port", ns, name)
		}
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0", Limit: 50})
		if err != nil {
			return nil, err
		}
		for _, kind := range []corev1.NodeAddressType{corev1.NodeExternalIP, corev1.NodeInternalIP} {
			n := 0
			for _, node := range nodes.Items {
				if !nodeReady(&node) {
					continue
				}
				for _, a := range node.Status.Addresses {
					if a.Type == kind && n < 2 {
						out = append(out, net.JoinHostPort(a.Address, strconv.Itoa(int(port.NodePort))))
						n++
					}
				}
			}
		}
		return out, nil
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
