package manifest

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"tunnel.dev/tunnel/rpc"
)

// allowAll answers every access review with yes.
func allowAll(cs *fake.Clientset) {
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authzv1.SelfSubjectAccessReview{Status: authzv1.SubjectAccessReviewStatus{Allowed: true}}, nil
	})
}

// An upgrade whose manager never becomes ready gives the Deployment its
// old spec back, so the manager that ran keeps running and sidecars keep
// the image it runs.
func TestFailedUpgradePutsTheManagerBack(t *testing.T) {
	cs := fake.NewClientset()
	allowAll(cs)
	old := Build(Options{Image: "reg.example/tunnel-agent:v1.1.0", Version: "v1.1.0", PullSecrets: []string{"pull"}})
	ctx := context.Background()
	for _, obj := range []runtime.Object{old.Namespace, old.Deployment} {
		if err := cs.Tracker().Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	err := Install(ctx, cs, Options{Image: "reg.example/tunnel-agent:v1.2.0", Version: "v1.2.0"}, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not become ready") {
		t.Fatalf("an upgrade that never becomes ready: %v", err)
	}
	d, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != "reg.example/tunnel-agent:v1.1.0" || d.Labels[VersionLabel] != "v1.1.0" ||
		len(d.Spec.Template.Spec.ImagePullSecrets) != 1 {
		t.Errorf("after the failed upgrade the manager runs %s (version %s, secrets %v)", img, d.Labels[VersionLabel], d.Spec.Template.Spec.ImagePullSecrets)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{}); err != nil {
		t.Errorf("the failed upgrade took the namespace: %v", err)
	}
}

// With its key, the manager listens for laptops on its loopback only
// (port-forwards arrive there), serves sidecars over TLS, and its
// Deployment names the key's pin for the sidecars intercepts add.
func TestBuildWithTheManagersKey(t *testing.T) {
	cert, key, err := NewTLS()
	if err != nil {
		t.Fatal(err)
	}
	o := Build(Options{Image: "agent:v1", TLSCert: cert, TLSKey: key})
	pin, err := KeyPin(cert)
	if err != nil || !strings.HasPrefix(pin, "sha256:") {
		t.Fatalf("pin %q %v", pin, err)
	}
	if got := o.Deployment.Annotations[KeyPinAnnotation]; got != pin {
		t.Errorf("the Deployment's pin %q, want %q", got, pin)
	}
	args := strings.Join(o.Deployment.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--listen 127.0.0.1:8022") || !strings.Contains(args, "--sidecar-listen :8023") {
		t.Errorf("the manager's args: %s", args)
	}
	for _, p := range o.Service.Spec.Ports {
		if p.Port == SessionPort {
			t.Errorf("the Service exposes the laptops' port %d", p.Port)
		}
	}
	if o.TLS == nil || string(o.TLS.Data["tls.key"]) != string(key) {
		t.Error("no Secret with the manager's key")
	}
	// The policy admits exactly the container's sidecar and metrics ports
	// from pods, and its WireGuard port from anywhere, by names the
	// container has, to the manager's pods.
	np := o.NetworkPolicy
	if np == nil || len(np.Spec.Ingress) != 2 || !reflect.DeepEqual(np.Spec.PodSelector.MatchLabels, o.Deployment.Spec.Selector.MatchLabels) {
		t.Fatalf("the network policy: %+v", np)
	}
	named := map[string]int32{}
	for _, p := range o.Deployment.Spec.Template.Spec.Containers[0].Ports {
		named[p.Name] = p.ContainerPort
	}
	var admitted []int32
	for _, p := range np.Spec.Ingress[0].Ports {
		admitted = append(admitted, named[p.Port.StrVal])
	}
	if want := []int32{rpc.SidecarSessionPort, MetricsPort}; !reflect.DeepEqual(admitted, want) {
		t.Errorf("the network policy admits ports %v, want %v", admitted, want)
	}
	wg := np.Spec.Ingress[1]
	if len(wg.From) != 0 || len(wg.Ports) != 1 || named[wg.Ports[0].Port.StrVal] != WireGuardPort || *wg.Ports[0].Protocol != corev1.ProtocolUDP {
		t.Errorf("the network policy's WireGuard rule: %+v", wg)
	}
	if _, _, err := NewTLS(); err != nil {
		t.Fatal(err)
	}
}

// TestBuildWireGuard: the WireGuard path's Service is of the kind asked
// for and targets the container's UDP port; off, there is no Service, no
// port and no argument, and the choice is kept on the Deployment.
func TestBuildWireGuard(t *testing.T) {
	for _, tc := range []struct {
		opt  string
		want corev1.ServiceType
	}{{"", corev1.ServiceTypeNodePort}, {WireGuardNodePort, corev1.ServiceTypeNodePort}, {WireGuardLoadBalancer, corev1.ServiceTypeLoadBalancer}, {WireGuardOff, ""}} {
		o := Build(Options{Image: "agent:v1", WireGuard: tc.opt})
		c := o.Deployment.Spec.Template.Spec.Containers[0]
		args := strings.Join(c.Args, " ")
		hasPort := slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
			return p.Name == "wireguard" && p.ContainerPort == WireGuardPort && p.Protocol == corev1.ProtocolUDP
		})
		if tc.want == "" {
			if o.WireGuardService != nil || hasPort || strings.Contains(args, "--wireguard") {
				t.Errorf("--wireguard off: service %v, port %v, args %s", o.WireGuardService, hasPort, args)
			}
		} else {
			svc := o.WireGuardService
			if svc == nil || svc.Spec.Type != tc.want || !hasPort || svc.Spec.Ports[0].TargetPort.StrVal != "wireguard" ||
				!strings.Contains(args, "--wireguard-port 51820 --wireguard-service tunnel-system/tunnel-manager-wireguard") {
				t.Errorf("--wireguard %q: service %+v, port %v, args %s", tc.opt, svc, hasPort, args)
			}
		}
		want, _ := ParseWireGuard(tc.opt)
		if got := o.Deployment.Annotations[WireGuardAnnotation]; got != want {
			t.Errorf("--wireguard %q: annotation %q", tc.opt, got)
		}
	}
	if _, err := ParseWireGuard("udp"); err == nil {
		t.Error("--wireguard udp parsed")
	}
}
