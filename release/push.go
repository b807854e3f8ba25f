package release

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// AgentRef is the agent image of a version under a registry prefix
// ("registry.example.com/team"): PREFIX/tunnel-agent:VERSION.
func AgentRef(registry, version string) string {
	// A tag has no "+": a version the Go toolchain stamps (v1.2.3+dirty)
	// keeps its other characters.
	return registry + "/" + AgentRepository + ":" + strings.ReplaceAll(version, "+", "_")
}

// Push writes the index to ref with the usual credential chain
// (~/.docker/config.json, $DOCKER_CONFIG, credential helpers) and returns
// the reference by digest. Options given override those (a keychain, a
// transport).
func Push(ctx context.Context, idx v1.ImageIndex, ref string, opts ...remote.Option) (name.Digest, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return name.Digest{}, fmt.Errorf("image name %q: %w", ref, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.WriteIndex(tag, idx, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return tag.Context().Digest(d.String()), nil
}
