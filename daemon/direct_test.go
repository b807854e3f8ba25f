package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"k8s.io/apimachinery/pkg/types"
	"tunnel.dev/tunnel/internal/testnet"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

// fakePod stands for a port-forward to one pod: each stream pair is a
// loopback connection whose far end goes to the fake sidecar.
type fakePod struct {
	t       *testing.T
	sidecar chan<- net.Conn
	ended   chan bool
}

func (f *fakePod) open(port int) (net.Conn, error) {
	if port != rpc.SidecarDirectPort {
		f.t.Errorf("a stream to port %d, want the sidecar's direct port %d", port, rpc.SidecarDirectPort)
	}
	a, b := testnet.Pair(f.t)
	f.sidecar <- b
	return a, nil
}
func (f *fakePod) done() <-chan bool { return f.ended }
func (f *fakePod) Close() error      { return nil }

// echoTemplate is what the workload's pods run: the app and the sidecar.
func echoTemplate() corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Image: "echo:1"}, {Name: rpc.SidecarContainer, Image: "agent:1"}}}}
}

func echoDeployment() *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "dev", UID: "uid-echo"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "echo"}}, Template: echoTemplate()}}
}

// echoReplicaSet is the Deployment's ReplicaSet, which its pods name.
func echoReplicaSet() *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "echo-abc", Namespace: "dev", UID: "uid-rs",
		Labels:          map[string]string{appsv1.DefaultDeploymentUniqueLabelKey: "abc"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "echo", UID: "uid-echo", Controller: ptr.To(true)}}},
		Spec: appsv1.ReplicaSetSpec{Template: echoTemplate()}}
}

func workloadPod(name string, ready bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "dev", UID: types.UID("uid-" + name),
			Labels:          map[string]string{"app": "echo", appsv1.DefaultDeploymentUniqueLabelKey: "abc"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "echo-abc", UID: "uid-rs", Controller: ptr.To(true)}}},
		Spec: echoTemplate().Spec,
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app", Ready: true}, {Name: rpc.SidecarContainer, Ready: ready}}},
	}
}

// hello runs a spare's handshake as pod's sidecar does, holding key, and
// returns the laptop's hello; the sidecar's last answer is the caller's.
func hello(t *testing.T, c net.Conn, key []byte, pod string) rpc.DirectHello {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := rpc.ReadDirectHello(c)
	if err != nil {
		t.Fatalf("a spare's hello: %v", err)
	}
	if err := rpc.AnswerDirect(c, key, pod, h); err != nil {
		t.Fatalf("the laptop's proof: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return h
}

func nextSpare(t *testing.T, spares <-chan net.Conn, what string) net.Conn {
	t.Helper()
	select {
	case c := <-spares:
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("no spare came: %s", what)
		return nil
	}
}

func TestDirectSparesReachTheLocalProcess(t *testing.T) {
	local := testnet.ServeTCP(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	// A look-alike: the workload's labels, a ready sidecar, no owner.
	impostor := workloadPod("echo-fake", true)
	impostor.OwnerReferences = nil
	cs := fake.NewClientset(echoDeployment(), echoReplicaSet(), workloadPod("echo-1", true), workloadPod("echo-2", false), impostor)
	allow(cs, "list pods", "watch pods", "create pods/portforward")
	x := newIntercepts(slog.New(slog.DiscardHandler))
	spares := make(chan net.Conn, 100)
	pods := make(chan string, 10)
	d := newDirect(slog.New(slog.DiscardHandler), nil, workload.Client{CS: cs}, x.serve)
	d.connect = func(_ context.Context, ns, pod string) (podConn, error) {
		pods <- ns + "/" + pod
		return &fakePod{t: t, sidecar: spares, ended: make(chan bool)}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	x.useDirect(ctx, d)
	mgr := &fakeManager{}
	spec := &managerpb.InterceptSpec{Name: "echo-http", Namespace: "dev", Workload: "echo", Port: 8080, Mode: managerpb.InterceptMode_GLOBAL}
	ic, err := x.add(ctx, mgr, spec, uint32(local.Port()))
	if err != nil {
		t.Fatal(err)
	}
	if ic.GetDirectKey() != nil {
		t.Error("add passed the direct key on to the CLI")
	}
	key := x.byID[ic.GetSpec().GetLaptopId()].pb.GetDirectKey()

	// Only the workload's pod whose sidecar is ready gets spares, d.spares
	// of them, each for the intercept's id, proving its key for that pod.
	select {
	case p := <-pods:
		if p != "dev/echo-1" {
			t.Errorf("port-forward to %s, want dev/echo-1", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no port-forward to the pod whose sidecar is ready")
	}
	var held []net.Conn
	for i := range d.spares {
		c := nextSpare(t, spares, "the first ones")
		if h := hello(t, c, key, "echo-1"); h.Intercept != ic.GetId() || bytes.Contains(h.Nonce, key) {
			t.Errorf("spare %d says intercept %d nonce %x, want %d and never the key", i, h.Intercept, h.Nonce, ic.GetId())
		}
		if _, err := c.Write([]byte{byte(rpc.StatusOK)}); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}

	// The sidecar takes one: the local process answers on it, and a new
	// spare replaces it.
	c := held[0]
	if err := rpc.WriteHeader(c, rpc.Header{Kind: rpc.KindIntercept, Dst: local, Flow: ic.GetSpec().GetLaptopId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := rpc.ReadStatus(c); err != nil {
		t.Fatalf("the laptop's answer on a taken spare: %v", err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("the local process echoed %q, %v", got, err)
	}
	hello(t, nextSpare(t, spares, "a replacement"), key, "echo-1")

	// Leaving ends the spares: the sidecar sees them close.
	if err := x.remove(ctx, mgr, "dev", "echo-http"); err != nil {
		t.Fatal(err)
	}
	for i, s := range held[1:] {
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := s.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("spare %d after leave: read %d, %v; want its end", i+1, n, err)
		}
	}
	select {
	case p := <-pods:
		t.Errorf("a port-forward to %s, want none to a pod whose sidecar is not ready", p)
	default:
	}
}

// allow answers the user's access reviews: yes for each "VERB RESOURCE[/SUB]"
// in may, no for the rest.
func allow(cs *fake.Clientset, may ...string) {
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authzv1.SelfSubjectAccessReview).DeepCopy()
		ra := r.Spec.ResourceAttributes
		what := ra.Verb + " " + ra.Resource
		if ra.Subresource != "" {
			what += "/" + ra.Subresource
		}
		r.Status.Allowed = slices.Contains(may, what)
		return true, r, nil
	})
}

func TestNoDirectPathWithoutPortForward(t *testing.T) {
	cs := fake.NewClientset(echoDeployment(), echoReplicaSet(), workloadPod("echo-1", true))
	allow(cs, "list pods", "watch pods")
	d := newDirect(slog.New(slog.DiscardHandler), nil, workload.Client{CS: cs}, nil)
	d.connect = func(context.Context, string, string) (podConn, error) {
		t.Error("a port-forward without the permission to make one")
		return nil, errors.New("forbidden")
	}
	done := make(chan struct{})
	go func() {
		d.run(context.Background(), &managerpb.Intercept{Spec: &managerpb.InterceptSpec{Namespace: "dev", Workload: "echo"}})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run kept going without the permission to port-forward")
	}
}
