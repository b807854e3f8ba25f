//go:build e2e

package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/integration/lab"
)

// attacker is a laptop that has no tunnel, only the programs an attacker
// would use on the manager's WireGuard port: wireguard-go (the official
// userspace WireGuard) and wg from wireguard-tools.
type attacker struct {
	*laptop
	wgGo  string
	iface string
}

func newAttacker(t *testing.T, name string) *attacker {
	t.Helper()
	bin := filepath.Join(h.Paths.State, "bin", "wireguard-go")
	if err := lab.BuildBinary(context.Background(), "golang.zx2c4.com/wireguard", bin); err != nil {
		t.Fatal(err)
	}
	return &attacker{laptop: newLaptop(t, name, "admin"), wgGo: bin, iface: "wg" + name}
}

// up makes the attacker's WireGuard interface: key, the manager as its
// peer, src as its own address, and a route to dst through it.
func (a *attacker) up(t *testing.T, key, managerKey, endpoint, src, dst string) {
	t.Helper()
	out, err := a.sh(fmt.Sprintf(`set -e
ip link del %[1]s 2>/dev/null || true
%[2]s %[1]s
echo %[3]s > /tmp/%[1]s.key
wg set %[1]s private-key /tmp/%[1]s.key peer %[4]s endpoint %[5]s allowed-ips 0.0.0.0/0 persistent-keepalive 1
ip addr add %[6]s/32 dev %[1]s
ip link set %[1]s up
ip route replace %[7]s/32 dev %[1]s src %[6]s`, a.iface, a.wgGo, key, managerKey, endpoint, src, dst))
	if err != nil {
		t.Fatalf("the attacker's WireGuard: %v\n%s", err, out)
	}
	t.Cleanup(func() { a.sh("ip link del " + a.iface) })
}

// received is how many bytes the manager sent the attacker's interface,
// and whether a handshake ever completed.
func (a *attacker) received(t *testing.T) (rx string, handshake bool) {
	t.Helper()
	out, err := a.sh(fmt.Sprintf("wg show %[1]s transfer; wg show %[1]s latest-handshakes", a.iface))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 {
		t.Fatalf("wg show: %v\n%s", err, out)
	}
	tr, hs := strings.Fields(lines[0]), strings.Fields(lines[1])
	return tr[1], hs[1] != "0"
}

// managerKey reads the manager's public key from its log, where it says it
// at start (a public key is no secret).
func managerKey(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	pods, err := h.Client.CoreV1().Pods(manifest.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + manifest.Manager})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("the manager's pod: %v", err)
	}
	b, err := h.Client.CoreV1().Pods(manifest.Namespace).GetLogs(pods.Items[0].Name, &corev1.PodLogOptions{Container: "manager"}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"public_key":"([A-Za-z0-9+/=]{44})"`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no public key in the manager's log:\n%s", b)
	}
	return string(m[1])
}

// keyLog reads the last session key a daemon wrote with
// TUNNEL_WIREGUARD_KEYLOG=1, and the session's tunnel address.
func keyLog(t *testing.T, l *laptop) (key, addr string) {
	t.Helper()
	out, err := l.sh(`cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/wireguard.keylog`)
	if err != nil {
		t.Fatalf("the key log: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "# session address "); ok {
			addr, _, _ = strings.Cut(v, ",")
		}
		if v, ok := strings.CutPrefix(line, "LOCAL_STATIC_PRIVATE_KEY = "); ok {
			key = v
		}
	}
	if key == "" || addr == "" {
		t.Fatalf("no key in the key log:\n%s", out)
	}
	return key, addr
}

// TestWireGuardPortAnswersOnlyLiveSessions attacks the manager's WireGuard
// port with wireguard-go and wg: a made-up key gets no answer at all; a
// session's own key, stolen from the daemon's key log, reaches nothing
// from an address other than the session's (and, as a control that the
// attack works, gets in from the session's own); and once the session has
// quit, the key gets no answer either.
func TestWireGuardPortAnswersOnlyLiveSessions(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	svc, err := h.Client.CoreV1().Services(ns).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := fmt.Sprintf("10.209.0.1:%d", wgNodePort(t))
	mgrKey := managerKey(t)
	curl := func(a *attacker) error {
		_, err := a.sh(fmt.Sprintf("curl -sS --max-time 3 http://%s/", svc.Spec.ClusterIP))
		return err
	}

	mallory := newAttacker(t, "mallory")
	madeUp, err := mallory.sh("wg genkey")
	if err != nil {
		t.Fatal(err)
	}
	mallory.up(t, strings.TrimSpace(madeUp), mgrKey, endpoint, "198.19.0.77", svc.Spec.ClusterIP)
	if err := curl(mallory); err == nil {
		t.Error("a made-up key reached a Service")
	}
	if rx, hs := mallory.received(t); rx != "0" || hs {
		t.Errorf("a made-up key got %s bytes back, handshake %v: want no answer at all", rx, hs)
	}

	// A connected laptop whose daemon logs its keys (root's choice).
	victim := newLaptop(t, "victim", "admin")
	victim.opt.Env = append(victim.opt.Env, "TUNNEL_WIREGUARD_KEYLOG=1")
	victim.must("connect", "-n", ns)
	victim.waitPath("wireguard", 5*time.Second)
	key, addr := keyLog(t, victim)

	thief := newAttacker(t, "thief")
	thief.up(t, key, mgrKey, endpoint, "198.19.0.250", svc.Spec.ClusterIP)
	if err := curl(thief); err == nil {
		t.Error("a session's key reached a Service from an address not the session's")
	}

	// The control: from the session's own address the same key gets in
	// (it is the session's, stolen from root's key log), so the refusals
	// around it are the manager's doing, not a broken attack. The victim's
	// UDP is dropped meanwhile: its probes, ten a second, would otherwise
	// move the peer's endpoint back to the victim (WireGuard's roaming),
	// and the answers to the thief with it.
	ctx := context.Background()
	if err := h.Lab.DropUDP(ctx, victim.opt.Laptop, true); err != nil {
		t.Fatal(err)
	}
	thief.up(t, key, mgrKey, endpoint, addr, svc.Spec.ClusterIP)
	err = curl(thief)
	if err := h.Lab.DropUDP(ctx, victim.opt.Laptop, false); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("the attack's control: the session's key from its own address: %v", err)
	}

	victim.must("quit")
	time.Sleep(time.Second)
	thief.up(t, key, mgrKey, endpoint, addr, svc.Spec.ClusterIP)
	if err := curl(thief); err == nil {
		t.Error("the key of a session that quit reached a Service")
	}
	if rx, hs := thief.received(t); rx != "0" || hs {
		t.Errorf("the key of a session that quit got %s bytes back, handshake %v: want no answer at all", rx, hs)
	}
}
