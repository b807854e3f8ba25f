//go:build e2e

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
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
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
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
