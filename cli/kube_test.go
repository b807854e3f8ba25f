package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The daemon gets the chosen context alone, its files inlined and its exec
// plugin named by absolute path.
func TestPortableKubeconfig(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["a"] = &clientcmdapi.Cluster{Server: "https://a:6443", CertificateAuthority: ca}
	cfg.Clusters["b"] = &clientcmdapi.Cluster{Server: "https://b:6443"}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{APIVersion: "client.authentication.k8s.io/v1", Command: "sh", InteractiveMode: clientcmdapi.NeverExecInteractiveMode}}
	cfg.Contexts["one"] = &clientcmdapi.Context{Cluster: "a", AuthInfo: "u", Namespace: "shop"}
	cfg.Contexts["two"] = &clientcmdapi.Context{Cluster: "b", AuthInfo: "u"}
	cfg.CurrentContext = "two"
	path := filepath.Join(dir, "config")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}

	kf := kubeFlags{kubeconfig: path, context: "one"}
	data, ctx, ns, err := kf.portable()
	if err != nil {
		t.Fatal(err)
	}
	if ctx != "one" || ns != "shop" {
		t.Errorf("context %q namespace %q", ctx, ns)
	}
	got, err := clientcmd.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Contexts) != 1 || len(got.Clusters) != 1 || got.CurrentContext != "one" {
		t.Errorf("not minified to context one: %+v", got.Contexts)
	}
	if c := got.Clusters["a"]; c == nil || c.CertificateAuthority != "" || !strings.Contains(string(c.CertificateAuthorityData), "BEGIN CERTIFICATE") {
		t.Errorf("the CA file was not inlined: %+v", c)
	}
	if cmd := got.AuthInfos["u"].Exec.Command; !filepath.IsAbs(cmd) {
		t.Errorf("exec command %q is not absolute", cmd)
	}

	kf = kubeFlags{kubeconfig: path, context: "nope"}
	if _, _, _, err := kf.portable(); err == nil || !strings.Contains(err.Error(), `no context "nope"`) {
		t.Errorf("unknown context: %v", err)
	}
	kf = kubeFlags{kubeconfig: path, namespace: "override"}
	if _, ctx, ns, err := kf.portable(); err != nil || ctx != "two" || ns != "override" {
		t.Errorf("-n override: %q %q %v", ctx, ns, err)
	}
}
