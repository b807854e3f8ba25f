package cli

import (
	"fmt"
	"github.com/spf13/pflag"

	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/version"
)

// agentFlags choose the agent image an install runs and how nodes pull it.
type agentFlags struct {
	image, registry string
	pullSecrets     []string
}

func (a *agentFlags) add(f *pflag.FlagSet) {
	f.StringVar(&a.image, "manager-image", "", "the agent image, exactly (default REGISTRY/tunnel-agent:VERSION)")
	f.StringVar(&a.registry, "registry", "", "the registry prefix the agent image is pulled from (default $"+manifest.RegistryEnv+", else the build's)")
	f.StringSliceVar(&a.pullSecrets, "image-pull-secret", nil, "a Secret nodes pull the agent image with, for the manager and every sidecar (repeatable)")
}

// install is what an install with these flags puts in the cluster.
func (a *agentFlags) install() (manifest.Options, error) {
	image, err := manifest.AgentImage(a.image, a.registry)
	if err != nil {
		return manifest.Options{}, err
	}
	opt := manifest.Options{Image: image, PullSecrets: a.pullSecrets}
	// The manager's own key for its sidecar port; an install that has one
	// keeps it (installFlags.options), or every sidecar would need a new pin.
	if opt.TLSCert, opt.TLSKey, err = manifest.NewTLS(); err != nil {
		return manifest.Options{}, fmt.Errorf("make the manager's key: %w", err)
	}
	if a.image == "" {
		opt.Version = version.Get().Version
	}
	return opt, nil
}
