//go:build linux

package lab

import (
	"context"
	"runtime"

	"tunnel.dev/tunnel/release"
)

// Agent is tunnel's agent image as the lab pushed it, the way `make image
// REGISTRY=RegistryHost()/tunnel` does: a multi-platform index under the
// version of this tree.
type Agent struct {
	Stamp  release.Stamp // what the CLI is built with to install it by default
	Ref    string        // by tag
	Digest string        // the index's digest
}

// PushAgent builds the agent image of this tree for linux/amd64 and
// linux/arm64 and pushes it to the lab's registry as the pusher.
func PushAgent(ctx context.Context, p Paths) (Agent, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return Agent{}, err
	}
	src := release.ReadSource(ctx, root)
	return PushAgentTo(ctx, p, AgentRegistry(), src.Version)
}

// PushAgentTo pushes the agent of this tree stamped as version under the
// registry prefix: another repository (a private one), or another version
// for tests of versions that differ.
func PushAgentTo(ctx context.Context, p Paths, registry, version string) (Agent, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return Agent{}, err
	}
	_, idx, err := release.BuildAgentImage(ctx, release.AgentBuild{Dir: root, WorkDir: p.state("images"), Version: version})
	if err != nil {
		return Agent{}, err
	}
	opts, err := p.registryOptions(ctx)
	if err != nil {
		return Agent{}, err
	}
	ref := release.AgentRef(registry, version)
	d, err := release.Push(ctx, idx, ref, opts...)
	if err != nil {
		return Agent{}, err
	}
	return Agent{Stamp: release.Stamp{Version: version, Registry: registry}, Ref: ref, Digest: d.DigestStr()}, nil
}

// BuildTunnel builds the tunnel CLI of this tree stamped as s, as `make
// build REGISTRY=...` does, at out.
func BuildTunnel(ctx context.Context, s release.Stamp, out string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	return release.Binary(ctx, root, "./cmd/tunnel", "linux", runtime.GOARCH, out, s)
}
