package daemon

import (
	"fmt"
	"os"
	"strconv"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

// Caller is the user the daemon acts for: who started it, and so who may
// use its socket and whose credential plugins it runs.
type Caller struct {
	UID, GID int
}

// restConfig builds the client config from the kubeconfig the CLI sent.
// Exec plugins are rewritten to run as the caller when the daemon is root
// and the caller is not.
func restConfig(kubeconfig []byte, context string, caller Caller) (*rest.Config, string, error) {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, "", fmt.Errorf("read the kubeconfig: %w", err)
	}
	if err := namesNoFiles(cfg); err != nil {
		return nil, "", err
	}
	if caller.UID != os.Geteuid() {
		self, err := os.Executable()
		if err != nil {
			return nil, "", err
		}
		for _, ai := range cfg.AuthInfos {
			wrapExec(ai, self, caller)
		}
	}
	if context == "" {
		context = cfg.CurrentContext
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*cfg, context, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("use context %q: %w", context, err)
	}
	return rc, context, nil
}

// namesNoFiles refuses a kubeconfig that names files: the daemon runs as
// root, so reading a path its caller chose would send root's files (a
// token, a key) to a server of the caller's choosing. The CLI inlines
// every file it may read, as the user, before it sends the kubeconfig.
func namesNoFiles(cfg *clientcmdapi.Config) error {
	refuse := func(what, name, path string) error {
		return fmt.Errorf("the kubeconfig sent to the daemon names a file (%s %q of %s): the daemon reads no files for its caller; connect with the tunnel CLI, which inlines them", what, path, name)
	}
	for name, c := range cfg.Clusters {
		if c.CertificateAuthority != "" {
			return refuse("certificate-authority", "cluster "+name, c.CertificateAuthority)
		}
	}
	for name, ai := range cfg.AuthInfos {
		switch {
		case ai.TokenFile != "":
			return refuse("tokenFile", "user "+name, ai.TokenFile)
		case ai.ClientCertificate != "":
			return refuse("client-certificate", "user "+name, ai.ClientCertificate)
		case ai.ClientKey != "":
			return refuse("client-key", "user "+name, ai.ClientKey)
		case ai.AuthProvider != nil:
			// Its settings name files and commands client-go runs itself.
			return fmt.Errorf("the kubeconfig's user %s uses auth-provider %q, which the daemon does not run: use an exec credential plugin", name, ai.AuthProvider.Name)
		}
	}
	return nil
}

func wrapExec(ai *clientcmdapi.AuthInfo, self string, caller Caller) {
	if ai == nil || ai.Exec == nil {
		return
	}
	args := []string{daemonpb.AsUserVerb, strconv.Itoa(caller.UID), strconv.Itoa(caller.GID), "--", ai.Exec.Command}
	ai.Exec.Args = append(args, ai.Exec.Args...)
	ai.Exec.Command = self
}
