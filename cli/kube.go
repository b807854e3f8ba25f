package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"tunnel.dev/tunnel/workload"
)

// kubeFlags are the usual Kubernetes flags: --kubeconfig, --context,
// -n/--namespace, with KUBECONFIG honoured as kubectl does.
type kubeFlags struct {
	kubeconfig, context, namespace string
}

func (k *kubeFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&k.context, "context", "", "the kubeconfig context to use")
	f.StringVarP(&k.namespace, "namespace", "n", "", "the namespace whose names resolve unqualified (default: the context's)")
}

func (k *kubeFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{
		CurrentContext: k.context,
		Context:        clientcmdapi.Context{Namespace: k.namespace},
	})
}

// client returns the user's own client for the chosen context.
func (k *kubeFlags) client() (*rest.Config, *kubernetes.Clientset, error) {
	rc, err := k.clientConfig().ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("no usable cluster in the kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return rc, cs, nil
}

// workloads returns the user's own client for workloads of every kind.
func (k *kubeFlags) workloads() (workload.Client, error) {
	rc, cs, err := k.client()
	if err != nil {
		return workload.Client{}, err
	}
	return workload.ForConfig(rc, cs)
}

// portable returns the chosen context as a kubeconfig of its own, files
// inlined and exec plugins named by absolute path, for the daemon, which
// runs elsewhere (as root, with root's PATH). It also returns the context
// and namespace it stands for.
func (k *kubeFlags) portable() ([]byte, string, string, error) {
	cc := k.clientConfig()
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, "", "", fmt.Errorf("read the kubeconfig: %w", err)
	}
	ctxName := raw.CurrentContext
	if k.context != "" {
		ctxName = k.context
	}
	if _, ok := raw.Contexts[ctxName]; !ok {
		return nil, "", "", fmt.Errorf("the kubeconfig has no context %q", ctxName)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", "", err
	}
	raw.CurrentContext = ctxName
	if err := clientcmdapi.MinifyConfig(&raw); err != nil {
		return nil, "", "", err
	}
	if err := clientcmdapi.FlattenConfig(&raw); err != nil {
		return nil, "", "", fmt.Errorf("inline the kubeconfig's files: %w", err)
	}
	for name, ai := range raw.AuthInfos {
		// FlattenConfig leaves a token file a path: read it here, as the
		// user; the daemon reads no file for anyone.
		if ai.TokenFile != "" {
			tok, err := os.ReadFile(ai.TokenFile)
			if err != nil {
				return nil, "", "", fmt.Errorf("read the token file of kubeconfig user %s: %w", name, err)
			}
			ai.Token, ai.TokenFile = strings.TrimSpace(string(tok)), ""
		}
		if ai.Exec != nil && !filepath.IsAbs(ai.Exec.Command) {
			if p, err := exec.LookPath(ai.Exec.Command); err == nil {
				ai.Exec.Command = p
			}
		}
	}
	data, err := clientcmd.Write(raw)
	return data, ctxName, ns, err
}
