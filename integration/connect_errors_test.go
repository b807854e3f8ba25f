//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/integration/lab"
)

// writeKubeconfig writes a variant of the admin kubeconfig for a test.
func writeKubeconfig(t *testing.T, edit func(*clientcmdapi.Config)) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(h.Paths.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openToAll(t, filepath.Dir(path))
	return path
}

// openToAll lets other users (the tests' nobody) into a t.TempDir folder
// and the per-test folder above it.
func openToAll(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// Each mistake gets one sentence and leaves the laptop as it was.
func TestConnectMistakesLeaveNothingBehind(t *testing.T) {
	installManager(t)
	l := newLaptop(t, "ivan", "admin")
	before := l.resolvConf()
	unreachable := writeKubeconfig(t, func(c *clientcmdapi.Config) {
		for _, cl := range c.Clusters {
			cl.Server = "https://10.209.0.1:1" // the node's address, a port nothing serves
		}
	})
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no reachable cluster": {[]string{"connect", "--kubeconfig", unreachable}, "cannot reach the cluster"},
		"wrong context":        {[]string{"connect", "--context", "nope"}, `no context "nope"`},
		"bad CIDR":             {[]string{"connect", "--also-proxy", "10.0.0.0/33"}, "--also-proxy"},
	} {
		out, err := l.run(tc.args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
		if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 {
			t.Errorf("%s: more than one line:\n%s", name, out)
		}
		if l.resolvConf() != before {
			t.Fatalf("%s changed resolv.conf", name)
		}
		if out, err := l.sh("ip -o link show tunnel0"); err == nil {
			t.Fatalf("%s left a TUN device: %s", name, out)
		}
		if out, err := l.sh(`pid=$(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock 2>/dev/null) && [ -n "$pid" ] && kill -0 $pid`); err == nil {
			t.Fatalf("%s left a daemon running: %s", name, out)
		}
	}

	// No root: the CLI says what it needs instead of half-starting.
	out, err := l.sh("setpriv --reuid 65534 --regid 65534 --clear-groups " + l.bin + " connect 2>&1")
	if err == nil || !strings.Contains(out, "root") {
		t.Errorf("connect as nobody: %v\n%s", err, out)
	}

	// A second connect elsewhere is refused while the first keeps working.
	l.must("connect")
	other := writeKubeconfig(t, func(c *clientcmdapi.Config) {
		ctx := c.Contexts[c.CurrentContext]
		delete(c.Contexts, c.CurrentContext)
		c.Contexts["elsewhere"] = ctx
		c.CurrentContext = "elsewhere"
	})
	out, err = l.run("connect", "--kubeconfig", other)
	if err == nil || !strings.Contains(out, "tunnel quit") {
		t.Errorf("a second connect to another context: %v\n%s", err, out)
	}
	if out, err := l.sh("dig +short kubernetes.default.svc." + h.Config.ClusterDomain); err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("the first connection broke: %v\n%s", err, out)
	}
	l.must("quit")
	if l.resolvConf() != before {
		t.Error("quit did not restore resolv.conf")
	}
}

// A VPN's route over a cluster subnet is named, with the flag that
// resolves it, and --never-proxy then connects around it.
func TestOverlappingRouteNamesTheFlag(t *testing.T) {
	installManager(t)
	l := newLaptop(t, "judy", "admin")
	if out, err := l.sh("ip route add 10.96.0.0/12 via 10.210.0.1 dev eth0 || ip route replace 10.96.0.0/12 via $(ip route show default | awk '{print $3}') dev eth0"); err != nil {
		t.Fatalf("add a VPN-like route: %v\n%s", err, out)
	}
	t.Cleanup(func() { l.sh("ip route del 10.96.0.0/12") })
	before := l.resolvConf()
	out, err := l.run("connect")
	if err == nil || !strings.Contains(out, "10.96.0.0/12") || !strings.Contains(out, "--never-proxy") {
		t.Fatalf("connect over a VPN's route: %v\n%s", err, out)
	}
	if l.resolvConf() != before {
		t.Fatal("the refused connect changed resolv.conf")
	}
	l.must("connect", "--never-proxy", h.Config.ServiceCIDR)
	st := l.must("status")
	if strings.Contains(st, h.Config.ServiceCIDR) {
		t.Errorf("--never-proxy %s is still routed:\n%s", h.Config.ServiceCIDR, st)
	}
}

// A kubeconfig whose credentials come from an exec plugin works, and the
// root daemon runs that plugin as the user who connected, never as root.
func TestExecPluginRunsAsTheUser(t *testing.T) {
	installManager(t)
	admin, err := clientcmd.LoadFromFile(h.Paths.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	ai := admin.AuthInfos[admin.Contexts[admin.CurrentContext].AuthInfo]
	dir := t.TempDir()
	openToAll(t, dir)
	cred := fmt.Sprintf(`{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":%q,"clientKeyData":%q}}`,
		ai.ClientCertificateData, ai.ClientKeyData)
	if err := os.WriteFile(filepath.Join(dir, "cred.json"), []byte(cred), 0o644); err != nil {
		t.Fatal(err)
	}
	uids := filepath.Join(dir, "uids")
	if err := os.WriteFile(uids, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(uids, 0o666)
	plugin := filepath.Join(dir, "plugin.sh")
	script := fmt.Sprintf("#!/bin/sh\nid -u >> %s\ncat %s\n", uids, filepath.Join(dir, "cred.json"))
	if err := os.WriteFile(plugin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	kubeconfig := writeKubeconfig(t, func(c *clientcmdapi.Config) {
		for _, a := range c.AuthInfos {
			a.ClientCertificateData, a.ClientKeyData = nil, nil
			a.Exec = &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: plugin,
				InteractiveMode: clientcmdapi.NeverExecInteractiveMode}
		}
	})

	// The daemon runs as root for user 65534 (nobody), as `tunnel connect`
	// would start it through sudo; the CLI runs as nobody.
	l := newLaptop(t, "kim", "admin")
	if out, err := l.sh(l.bin + " daemon --uid 65534 --gid 65534 >/dev/null 2>&1 &"); err != nil {
		t.Fatalf("start the daemon: %v\n%s", err, out)
	}
	asNobody := "setpriv --reuid 65534 --regid 65534 --clear-groups env HOME=/tmp " + l.bin
	out, err := l.sh("for i in $(seq 1 50); do " + asNobody + " status >/dev/null 2>&1 && break; sleep 0.1; done; " +
		asNobody + " connect --kubeconfig " + kubeconfig + " 2>&1")
	if err != nil {
		t.Fatalf("connect as nobody with an exec plugin: %v\n%s", err, out)
	}
	if out, err := l.sh("dig +short kubernetes.default.svc." + h.Config.ClusterDomain); err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("cluster DNS after an exec-plugin connect: %v\n%s", err, out)
	}
	// The daemon is nobody's: another user is told so, not offered a second one.
	other := "setpriv --reuid 65533 --regid 65533 --clear-groups env HOME=/tmp " + l.bin
	if out, err := l.sh(other + " status 2>&1"); err == nil || !strings.Contains(out, "belongs to another user") {
		t.Errorf("status as another user: %v\n%s", err, out)
	}
	if out, err := l.sh(asNobody + " quit"); err != nil {
		t.Errorf("quit as nobody: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(uids)
	ran := strings.Fields(string(got))
	if len(ran) < 2 { // once in the CLI, at least once in the daemon
		t.Fatalf("the plugin ran %d times: %q", len(ran), got)
	}
	for _, uid := range ran {
		if uid != "65534" {
			t.Errorf("the exec plugin ran as uid %s, want 65534 every time: %q", uid, got)
		}
	}
}

// A manager installed by connect that cannot start is removed again, and
// the user reads the pod's reason.
func TestConnectRemovesAManagerThatCannotStart(t *testing.T) {
	ctx := context.Background()
	if out, err := h.Run(ctx, node, h.Tunnel(t), "uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	t.Cleanup(func() { installManager(t) })
	l := newLaptop(t, "leo", "admin")
	before := l.resolvConf()
	out, err := l.run("connect", "--manager-image", lab.AgentRegistry()+"/tunnel-agent:no-such-tag")
	if err == nil || !strings.Contains(out, "did not become ready") || !strings.Contains(out, "ErrImage") {
		t.Fatalf("connect with an image that does not exist: %v\n%s", err, out)
	}
	if _, err := h.Client.CoreV1().Namespaces().Get(ctx, "tunnel-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the broken install was left behind: %v", err)
	}
	if l.resolvConf() != before {
		t.Error("the failed connect changed resolv.conf")
	}
}

// A kubeconfig with a bearer token (a ServiceAccount's, from the
// TokenRequest API) connects once the account is allowed.
func TestTokenKubeconfigConnects(t *testing.T) {
	ctx := context.Background()
	ns := h.Namespace(t)
	sa, err := h.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ci-bot"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := h.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	installManager(t, "--allow-user", "system:serviceaccount:"+ns+":ci-bot")
	kubeconfig := writeKubeconfig(t, func(c *clientcmdapi.Config) {
		for _, a := range c.AuthInfos {
			a.ClientCertificateData, a.ClientKeyData = nil, nil
			a.Token = tok.Status.Token
		}
	})
	l := newLaptop(t, "mona", "admin")
	l.must("connect", "--kubeconfig", kubeconfig)
	if out, err := l.sh("dig +short kubernetes.default.svc." + h.Config.ClusterDomain); err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("cluster DNS with a token kubeconfig: %v\n%s", err, out)
	}
	l.must("quit")
}
