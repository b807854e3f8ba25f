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

func wrapExec(ai *clientcmdapi.AuthInfo, self string, caller Caller) {
	if ai == nil || ai.Exec == nil {
		return
	}
	args := []string{daemonpb.AsUserVerb, strconv.Itoa(caller.UID), strconv.Itoa(caller.GID), "--", ai.Exec.Command}
	ai.Exec.Args = append(args, ai.Exec.Args...)
	ai.Exec.Command = self
}
