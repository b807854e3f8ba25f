package daemon

import (
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

func kubeconfigWithExec(t *testing.T) []byte {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://10.209.0.1:6443"}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Exec: &clientcmdapi.ExecConfig{
		APIVersion: "client.authentication.k8s.io/v1", Command: "/usr/bin/get-token", Args: []string{"--cluster", "c"},
		InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
	}}
	cfg.Contexts["ctx"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "ctx"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The daemon runs as root; a user's credential plugin must not.
func TestExecPluginRunsAsTheCaller(t *testing.T) {
	rc, ctx, err := restConfig(kubeconfigWithExec(t), "", Caller{UID: 1000, GID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if ctx != "ctx" || rc.Host != "https://10.209.0.1:6443" {
		t.Errorf("context %q host %q", ctx, rc.Host)
	}
	want := []string{daemonpb.AsUserVerb, "1000", "1000", "--", "/usr/bin/get-token", "--cluster", "c"}
	if rc.ExecProvider == nil || !slices.Equal(rc.ExecProvider.Args, want) {
		t.Fatalf("exec provider %+v, want args %v", rc.ExecProvider, want)
	}
}

func TestExecPluginUntouchedForTheSameUser(t *testing.T) {
	rc, _, err := restConfig(kubeconfigWithExec(t), "ctx", Caller{UID: os.Geteuid(), GID: os.Getegid()})
	if err != nil {
		t.Fatal(err)
	}
	if rc.ExecProvider.Command != "/usr/bin/get-token" {
		t.Fatalf("exec provider rewritten for its own user: %+v", rc.ExecProvider)
	}
}

func TestRestConfigErrors(t *testing.T) {
	if _, _, err := restConfig([]byte("{not yaml"), "", Caller{}); err == nil {
		t.Error("a broken kubeconfig was accepted")
	}
	if _, _, err := restConfig(kubeconfigWithExec(t), "nope", Caller{}); err == nil {
		t.Error("an unknown context was accepted")
	}
}

// Root reads no file a caller names: a kubeconfig with paths is refused
// before anything is read.
func TestKubeconfigNamingFilesIsRefused(t *testing.T) {
	for what, edit := range map[string]func(*clientcmdapi.Config){
		"tokenFile":             func(c *clientcmdapi.Config) { c.AuthInfos["u"].TokenFile = "/root/.kube/token" },
		"client-certificate":    func(c *clientcmdapi.Config) { c.AuthInfos["u"].ClientCertificate = "/root/cert.pem" },
		"client-key":            func(c *clientcmdapi.Config) { c.AuthInfos["u"].ClientKey = "/root/key.pem" },
		"certificate-authority": func(c *clientcmdapi.Config) { c.Clusters["c"].CertificateAuthority = "/etc/shadow" },
		"auth-provider": func(c *clientcmdapi.Config) {
			c.AuthInfos["u"].AuthProvider = &clientcmdapi.AuthProviderConfig{Name: "oidc", Config: map[string]string{"idp-certificate-authority": "/root/ca"}}
		},
	} {
		cfg, err := clientcmd.Load(kubeconfigWithExec(t))
		if err != nil {
			t.Fatal(err)
		}
		cfg.AuthInfos["u"].Exec = nil
		edit(cfg)
		b, err := clientcmd.Write(*cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = restConfig(b, "", Caller{UID: os.Geteuid(), GID: os.Getegid()})
		if err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("a kubeconfig with %s: %v, want refused naming it", what, err)
		}
	}
}
