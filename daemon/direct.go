package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/rollout"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

// direct keeps spare streams from this laptop straight to each sidecar of
// an intercepted workload: one port-forward per pod, to the sidecar's
// direct port, with a few stream pairs open on it. A sidecar hands a spare
// to a new connection for this laptop, which then crosses the API server
// and the kubelet once and is copied by neither the manager nor a second
// yamux session: the path costs what `kubectl port-forward` costs. Without
// spares (no permission to port-forward to the pods, an older sidecar) the
// sidecar goes through the manager, so the direct path is only ever faster.
type direct struct {
	log *slog.Logger
	cs  kubernetes.Interface
	wc  workload.Client
	// connect opens a port-forward connection to a pod; tests replace it.
	connect func(ctx context.Context, ns, pod string) (podConn, error)
	// serve answers a spare a sidecar took, as a stream from the manager.
	serve  func(ctx context.Context, c net.Conn, h rpc.Header)
	spares int // kept open per pod
}

// podConn opens stream pairs to a pod's port over one port-forward.
type podConn interface {
	open(port int) (net.Conn, error)
	done() <-chan bool // closed when the port-forward ends
	Close() error
}

func newDirect(log *slog.Logger, rc *rest.Config, wc workload.Client, serve func(context.Context, net.Conn, rpc.Header)) *direct {
	cs := wc.CS
	return &direct{
		log: log.With("subsystem", "direct"), cs: cs, wc: wc, serve: serve, spares: 4,
		connect: func(ctx context.Context, ns, pod string) (podConn, error) {
			c, err := dialPortForwardConn(ctx, rc, cs, ns, pod)
			if err != nil {
				return nil, err
			}
			return &spdyPod{conn: c}, nil
		},
	}
}

// spdyPod is a podConn over a real port-forward.
type spdyPod struct {
	conn httpstream.Connection
	next atomic.Uint64 // stream pairs' request ids
}

func (p *spdyPod) open(port int) (net.Conn, error) {
	return openPortForward(p.conn, port, p.next.Add(1))
}
func (p *spdyPod) done() <-chan bool { return p.conn.CloseChan() }
func (p *spdyPod) Close() error      { return p.conn.Close() }

// run keeps spares at every ready sidecar of ic's workload until ctx ends.
// It follows the pods with an informer: a rollout's new pods get spares as
// they become ready, and a pod that goes takes its port-forward along.
func (d *direct) run(ctx context.Context, ic *managerpb.Intercept) {
	spec := ic.GetSpec()
	log := d.log.With("intercept", spec.GetName(), "namespace", spec.GetNamespace())
	// Asked first, so that a user without them gets one line here rather
	// than an informer's endless retries in the log.
	if err := access.Check(ctx, d.cs, spec.GetNamespace(), "the direct path to the workload's pods needs; its traffic comes through the manager",
		authzv1.ResourceAttributes{Verb: "list", Resource: "pods"},
		authzv1.ResourceAttributes{Verb: "watch", Resource: "pods"},
		authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "portforward"},
	); err != nil {
		log.Info("no direct path", "err", err)
		return
	}
	ref, err := workload.ParseRef(spec.GetWorkload())
	var w *workload.Workload
	if err == nil {
		w, err = d.wc.Get(ctx, spec.GetNamespace(), ref)
	}
	if err != nil {
		log.Info("no direct path to the workload's pods; its traffic comes through the manager", "err", err)
		return
	}
	if w.Selector == nil { // an empty selector would watch every pod of the namespace
		log.Info("no direct path: the workload has no selector; its traffic comes through the manager")
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(w.Selector)
	if err != nil {
		log.Info("no direct path: the workload's selector", "err", err)
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(d.cs, 0, informers.WithNamespace(spec.GetNamespace()),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	pods := factory.Core().V1().Pods().Informer()
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() },
	}); err != nil {
		log.Info("no direct path: watch the workload's pods", "err", err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	owned := ownedBy(ctx, d.wc, w)
	links := map[string]func(){} // by pod name
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			for _, stop := range links {
				stop()
			}
			return
		case <-changed:
		}
		seen := map[string]bool{}
		for _, obj := range pods.GetStore().List() {
			p, ok := obj.(*corev1.Pod)
			if !ok || !serving(p) || !owned(p) {
				continue
			}
			seen[p.Name] = true
			if links[p.Name] == nil && sidecarReady(p) {
				pctx, stop := context.WithCancel(ctx)
				links[p.Name] = stop
				wg.Go(func() { d.pod(pctx, log.With("pod", p.Name), ic, p.Name) })
			}
		}
		for name, stop := range links {
			if !seen[name] {
				stop()
				delete(links, name)
			}
		}
	}
}

// ownedBy returns a test of whether a pod is the workload's: its
// controllers lead to it, each by UID, and it runs the template that made
// it (workload.Client.PodTemplate). Labels and owner references alone say
// nothing: anyone who may create pods can copy them, and a look-alike pod
// must not get spares (it could not use them, but it would keep the
// laptop's port-forwards busy).
func ownedBy(ctx context.Context, wc workload.Client, w *workload.Workload) func(*corev1.Pod) bool {
	seen := map[types.UID]bool{} // by pod UID
	return func(p *corev1.Pod) bool {
		if ok, known := seen[p.UID]; known {
			return ok
		}
		made, _, err := wc.PodTemplate(ctx, p.Namespace, p, w.Ref)
		if err != nil && !errors.Is(err, workload.ErrNotOwned) {
			return false // asked again at the next change
		}
		ok := err == nil && rollout.Runs(p, made)
		seen[p.UID] = ok
		return ok
	}
}

// serving: the pod runs and is not being deleted.
func serving(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning
}

// sidecarReady: the pod's sidecar has its intercepts (its readiness).
func sidecarReady(p *corev1.Pod) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == rpc.SidecarContainer {
			return cs.Ready
		}
	}
	return false
}

// pod keeps spares at one pod until ctx ends, port-forwarding again with
// backoff when the port-forward breaks or cannot be made.
func (d *direct) pod(ctx context.Context, log *slog.Logger, ic *managerpb.Intercept, name string) {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		pc, err := d.connect(ctx, ic.GetSpec().GetNamespace(), name)
		if err == nil {
			err = d.fill(ctx, log, pc, ic, name)
			pc.Close()
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		log.Debug("direct path down; retrying", "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// fill keeps d.spares spares open on pc until pc or ctx ends.
func (d *direct) fill(ctx context.Context, log *slog.Logger, pc podConn, ic *managerpb.Intercept, pod string) error {
	var wg sync.WaitGroup
	errs := make(chan error, d.spares)
	var up sync.Once
	for range d.spares {
		wg.Go(func() { errs <- d.spare(ctx, pc, ic, pod, func() { up.Do(func() { log.Info("direct path up") }) }) })
	}
	wg.Wait()
	return <-errs
}

// spare offers the sidecar one spare after another: each waits until the
// sidecar takes it for a connection, which is served while the next spare
// is opened. It ends with pc, with ctx, or when the sidecar will not take
// spares from this laptop.
func (d *direct) spare(ctx context.Context, pc podConn, ic *managerpb.Intercept, pod string, accepted func()) error {
	pause := 100 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pc.done():
			return errors.New("the port-forward ended")
		default:
		}
		c, err := pc.open(rpc.SidecarDirectPort)
		if err != nil {
			return err
		}
		h, err := offer(ctx, c, ic, pod, accepted)
		if err == nil {
			go d.serve(ctx, c, h)
			pause = 100 * time.Millisecond
			continue
		}
		c.Close()
		var status rpc.Status
		if errors.As(err, &status) && status == rpc.StatusForbidden {
			return fmt.Errorf("the sidecar refused this laptop's key: %w", err)
		}
		if errors.Is(err, rpc.ErrDirectImpostor) {
			return err // nothing was given away: the key never crosses
		}
		// Closed by the sidecar (the intercept changed, it holds enough
		// spares, it restarted) or by the kubelet: open another soon.
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return ctx.Err()
		}
		pause = min(pause*2, 10*time.Second)
	}
}

// offer runs the handshake on c with pod's sidecar and waits for it to
// take the spare: the header of the connection it carries.
func offer(ctx context.Context, c net.Conn, ic *managerpb.Intercept, pod string, accepted func()) (rpc.Header, error) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	// A pfConn has no deadlines: a handshake left unanswered is closed.
	late := time.AfterFunc(10*time.Second, func() { c.Close() })
	err := rpc.OfferDirect(c, ic.GetDirectKey(), pod, ic.GetId())
	late.Stop()
	if err != nil {
		return rpc.Header{}, err
	}
	accepted()
	h, err := rpc.ReadHeader(c)
	if err == nil && h.Kind != rpc.KindIntercept {
		err = fmt.Errorf("%w: a %s stream on a spare", rpc.ErrBadHeader, h.Kind)
	}
	return h, err
}
