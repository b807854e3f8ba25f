package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/user"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/version"
	"tunnel.dev/tunnel/workload"
)

// ManagerLabel selects the manager's pods; ManagerPort is its session port.
const (
	ManagerLabel = "app.kubernetes.io/name=tunnel-manager"
	ManagerPort  = 8022
)

// ErrVersionSkew means this daemon and the manager are of versions that do
// not go together (version.Compatible); a SkewError says which to upgrade.
var ErrVersionSkew = errors.New("versions that do not go together")

// SkewError is a refusal for versions; Sentence is what the user reads.
type SkewError struct{ Sentence string }

func (e *SkewError) Error() string        { return e.Sentence }
func (e *SkewError) Is(target error) bool { return target == ErrVersionSkew }

// maxUnverifiedTries bounds how often a reconnect that comes back
// unverified is tried again: about half a minute of backoff.
const maxUnverifiedTries = 15

// ErrNoManager means no manager pod is ready to take a session.
var ErrNoManager = errors.New("no tunnel manager is running")

// session keeps one yamux session to the manager alive over a port-forward:
// it reconnects by itself with backoff when the pod or the port-forward
// goes, and tells the daemon each time the cluster's shape changes.
type session struct {
	log       *slog.Logger
	rc        *rest.Config
	workloads workload.Client // the user's clients: pods, port-forwards, the intercepted workloads
	ns        string          // the manager's namespace
	onCluster func(*managerpb.ClusterInfo)
	icpt      *intercepts // answers the streams the manager opens

	flows      atomic.Uint64
	reconnects atomic.Uint64

	mu       sync.Mutex // guards following
	cur      *yamux.Session
	ctl      managerpb.ManagerClient
	grpc     *grpc.ClientConn
	pf       *pfConn
	state    string
	mgrVer   string
	user     string        // as the manager knows us
	proofErr error         // why we could not prove who we are to the manager, if we could not
	changed  chan struct{} // closed and replaced when cur changes

	netChanged chan struct{} // an address of the laptop went away

	wasVerified     bool   // a session of ours was verified: later ones must be too
	unverifiedTries int    // reconnects in a row that came back unverified
	pathDied        func() // the way to the API server went: drop its connections
	// onSession runs for each live session (the first and every
	// reconnect) until its context ends with the session; it is given
	// how to serve a connection the manager opens.
	onSession func(context.Context, managerpb.ManagerClient, func(net.Conn))
}

func newSession(logger *slog.Logger, rc *rest.Config, wc workload.Client, ns string, onCluster func(*managerpb.ClusterInfo)) *session {
	return &session{
		log: logger.With("subsystem", "session"), rc: rc, workloads: wc, ns: ns, onCluster: onCluster,
		state: "connecting", changed: make(chan struct{}), icpt: newIntercepts(logger),
		netChanged: make(chan struct{}, 1),
	}
}

// yamuxConfig: keepalives notice a dead port-forward within seconds; large
// windows keep a bulk download from stalling on the tunnel's round trips.
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = true
	c.KeepAliveInterval = keepAliveInterval // watchSilence listens for the answers
	c.ConnectionWriteTimeout = 10 * time.Second
	c.MaxStreamWindowSize = 16 << 20
	c.StreamCloseTimeout = time.Minute
	c.LogOutput = nil
	c.Logger = slogLogger{}
	return c
}

// connect makes one attempt: find the manager's pod, port-forward to it,
// start yamux and say hello. It returns the first ClusterInfo.
func (s *session) connect(ctx context.Context) (*managerpb.ClusterInfo, error) {
	pod, err := s.managerPod(ctx)
	if err != nil {
		return nil, err
	}
	pf, err := dialPortForward(ctx, s.rc, s.workloads.CS, s.ns, pod, ManagerPort)
	if err != nil {
		return nil, err
	}
	heard := newHeardConn(pf)
	mux, err := yamux.Client(rpc.CoalesceWrites(heard), yamuxConfig())
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	cc, err := rpc.DialControl(mux)
	if err != nil {
		mux.Close()
		pf.Close()
		return nil, err
	}
	ctl := managerpb.NewManagerClient(cc)
	fail := func(what string, err error) (*managerpb.ClusterInfo, error) {
		cc.Close()
		mux.Close()
		pf.Close()
		return nil, fmt.Errorf("%s with the manager (pod %s/%s): %w", what, s.ns, pod, err)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	host, _ := os.Hostname()
	// Without a proof the session still connects; only intercepts, which
	// belong to a user, need one. The manager says why it has none.
	proof, key, perr := proveIdentity(hctx, s.workloads.CS)
	if perr != nil {
		s.log.Warn("no proof of identity for the manager", "err", perr)
	}
	s.mu.Lock()
	s.proofErr = perr
	s.mu.Unlock()
	req := &managerpb.HelloRequest{ClientVersion: version.Get().Version, User: userName(), Host: host, IdentityProof: proof}
	if key != nil {
		// The proof is bound to this session: signed over the manager's
		// nonce for it. (A manager before challenges has none to give.)
		ch, cerr := ctl.Challenge(hctx, &managerpb.ChallengeRequest{})
		if cerr == nil {
			req.IdentitySignature = ed25519.Sign(key, rpc.ProofMessage(ch.GetNonce(), proof))
		} else if status.Code(cerr) != codes.Unimplemented {
			return fail("ask for the session's challenge", cerr)
		}
	}
	hello, err := ctl.Hello(hctx, req)
	if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
		err = &SkewError{Sentence: st.Message()}
	} else if err == nil {
		// A manager older than this rule does not check: the daemon does.
		if verr := version.Compatible(version.Get().Version, hello.GetManagerVersion()); verr != nil {
			err = &SkewError{Sentence: verr.Error()}
		}
	}
	if errors.Is(err, ErrVersionSkew) {
		cc.Close()
		mux.Close()
		pf.Close()
		return nil, err
	}
	if err != nil {
		return fail("say hello", err)
	}
	// A session that was verified before is verified again, or tried again:
	// a manager that cannot read the proof now (the API server just
	// restarted) would leave it without intercepts, which belong to a user.
	// After many tries it goes on unverified, and says why in status.
	s.mu.Lock()
	insist := s.wasVerified && hello.GetUser() == "" && s.unverifiedTries < maxUnverifiedTries
	if insist {
		s.unverifiedTries++
	}
	s.mu.Unlock()
	if insist {
		why := hello.GetIdentityError()
		if perr != nil {
			why = perr.Error()
		}
		return fail("prove who we are", errors.New(why))
	}
	watch, err := ctl.WatchCluster(context.WithoutCancel(ctx), &managerpb.WatchClusterRequest{})
	if err != nil {
		return fail("watch the cluster", err)
	}
	info, err := watch.Recv()
	if err != nil {
		return fail("read the cluster's subnets", err)
	}

	go s.accept(context.WithoutCancel(ctx), mux)
	go watchSilence(context.WithoutCancel(ctx), s.log, mux, heard, silenceLimit, s.netChanged, s.pathDied)
	s.mu.Lock()
	s.cur, s.ctl, s.grpc, s.pf, s.mgrVer, s.user, s.state = mux, ctl, cc, pf, hello.ManagerVersion, hello.GetUser(), "connected"
	if hello.GetUser() != "" {
		s.wasVerified, s.unverifiedTries = true, 0
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("session up", "pod", pod, "manager", hello.ManagerVersion, "session", hello.SessionId,
		"user", hello.GetUser(), "unverified_because", hello.GetIdentityError())

	go func() { // the rest of the watch: changes of the cluster
		for {
			info, err := watch.Recv()
			if err != nil {
				return
			}
			s.onCluster(info)
		}
	}()
	return info, nil
}

// run keeps the session up until ctx ends: when the current one dies it
// reconnects with exponential backoff (100 ms to 2 s, jittered): a
// reconnect is a pod list and a port-forward, cheap enough to try every
// other second, and a user waits for the first one that works.
func (s *session) run(ctx context.Context) {
	s.icpt.useDirect(ctx, newDirect(s.log, s.rc, s.workloads, s.icpt.serve))
	go func() {
		err := watchAddresses(ctx, func() {
			select {
			case s.netChanged <- struct{}{}:
			default: // one look is pending already
			}
		})
		if err != nil {
			s.log.Warn("cannot watch this machine's addresses; a network change is noticed by silence alone", "err", err)
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		s.mu.Lock()
		mux, ctl := s.cur, s.ctl
		s.mu.Unlock()
		if mux != nil {
			// What runs for the session ends before the next one starts.
			sctx, cancel := context.WithCancel(ctx)
			var running sync.WaitGroup
			if s.onSession != nil {
				running.Go(func() {
					s.onSession(sctx, ctl, func(c net.Conn) { s.fromManager(context.WithoutCancel(ctx), c) })
				})
			}
			endSession := func() { cancel(); running.Wait() }
			select {
			case <-mux.CloseChan():
				endSession()
			case <-ctx.Done():
				endSession()
				s.close()
				return
			}
			s.drop("the session ended; reconnecting")
			s.reconnects.Add(1)
		}
		for {
			info, err := s.connect(ctx)
			if err == nil {
				s.onCluster(info)
				if _, ctl, err := s.current(ctx); err == nil {
					s.icpt.reregister(ctx, ctl)
				}
				backoff = 100 * time.Millisecond
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.setState("reconnecting: " + err.Error())
			s.log.Warn("reconnect failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff + rand.N(backoff/2)):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			if errors.Is(err, ErrVersionSkew) {
				// Nothing changes until someone upgrades: ask seldom.
				backoff = time.Minute
			}
		}
	}
}

func (s *session) drop(state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpc != nil {
		s.grpc.Close()
	}
	if s.cur != nil {
		s.cur.Close()
	}
	if s.pf != nil {
		s.pf.Close()
	}
	s.cur, s.ctl, s.grpc, s.pf, s.state = nil, nil, nil, nil, state
}

func (s *session) close() { s.drop("closed") }

func (s *session) setState(st string) {
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
}

// current waits (as long as ctx allows) for a live session: while it
// reconnects, new connections wait instead of failing.
func (s *session) current(ctx context.Context) (*yamux.Session, managerpb.ManagerClient, error) {
	for {
		s.mu.Lock()
		mux, ctl, changed, state := s.cur, s.ctl, s.changed, s.state
		s.mu.Unlock()
		if mux != nil && !mux.IsClosed() {
			return mux, ctl, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("no session to the cluster (%s): %w", state, ctx.Err())
		}
	}
}

// DialStream opens a stream for one TCP connection or UDP flow and waits for
// the manager's answer: the netstack's only view of the tunnel.
func (s *session) DialStream(ctx context.Context, kind rpc.Kind, src, dst netip.AddrPort) (net.Conn, error) {
	mux, _, err := s.current(ctx)
	if err != nil {
		return nil, err
	}
	st, err := mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream to %s: %w", dst, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	if err := rpc.WriteHeader(st, rpc.Header{Kind: kind, Dst: dst, Flow: s.flows.Add(1)}); err != nil {
		st.Close()
		return nil, err
	}
	if err := rpc.ReadStatus(st); err != nil {
		st.Close()
		return nil, err
	}
	st.SetDeadline(time.Time{})
	return halfCloser{st}, nil
}

// accept serves the streams the manager opens on mux: intercepted
// connections, each answered by a local process. It ends with mux.
func (s *session) accept(ctx context.Context, mux *yamux.Session) {
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			return
		}
		go s.fromManager(ctx, st)
	}
}

// fromManager serves one connection the manager opened, over the session
// or over the WireGuard path: a header, then an intercepted connection.
func (s *session) fromManager(ctx context.Context, st net.Conn) {
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := rpc.ReadHeader(st)
	_ = st.SetReadDeadline(time.Time{})
	if err != nil || h.Kind != rpc.KindIntercept {
		st.Close()
		return
	}
	s.icpt.serve(ctx, st, h)
}

// halfCloser lets the netstack half-close a stream: a yamux Close sends FIN
// and the stream goes on reading until the other side's FIN.
type halfCloser struct{ *yamux.Stream }

func (h halfCloser) CloseWrite() error { return h.Stream.Close() }

// managerPod picks the newest ready manager pod.
func (s *session) managerPod(ctx context.Context) (string, error) {
	pods, err := s.workloads.CS.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{LabelSelector: ManagerLabel})
	if err != nil {
		return "", fmt.Errorf("find the manager in namespace %s: %w", s.ns, err)
	}
	var ready []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(&p) {
			ready = append(ready, p)
		}
	}
	if len(ready) == 0 {
		return "", fmt.Errorf("%w in namespace %s", ErrNoManager, s.ns)
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].CreationTimestamp.After(ready[j].CreationTimestamp.Time) })
	return ready[0].Name, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func userName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

// slogLogger quiets yamux's own logging; its errors surface as closed
// sessions, which the session logs itself.
type slogLogger struct{}

func (slogLogger) Print(...any)          {}
func (slogLogger) Printf(string, ...any) {}
func (slogLogger) Println(...any)        {}
