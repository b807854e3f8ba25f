package build

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"tunnel.dev/tunnel/release"
)

// baseImage is what the binary goes on: tunnel's own layer (own), or a
// registry's image, an index or a single platform's.
type baseImage struct {
	own   bool
	certs bool          // own, with a CA bundle
	layer v1.Layer      // own
	ref   string        // the base's name, for errors
	index v1.ImageIndex // a multi-platform base
	image v1.Image      // a single-platform base
	ropts []remote.Option
}

func loadBase(ctx context.Context, opt Options, ropts []remote.Option) (*baseImage, error) {
	if opt.Base == "" {
		l, err := release.BaseLayer(opt.CACerts, epoch)
		if err != nil {
			return nil, err
		}
		return &baseImage{own: true, certs: len(opt.CACerts) > 0, layer: l}, nil
	}
	ref, err := name.ParseReference(opt.Base)
	if err != nil {
		return nil, fmt.Errorf("base image %q: %w", opt.Base, err)
	}
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, fmt.Errorf("base image %s: %w", opt.Base, err)
	}
	b := &baseImage{ref: opt.Base, ropts: ropts}
	if desc.MediaType.IsIndex() {
		b.index, err = desc.ImageIndex()
	} else {
		b.image, err = desc.Image()
	}
	if err != nil {
		return nil, fmt.Errorf("base image %s: %w", opt.Base, err)
	}
	return b, nil
}

// forPlatform is the base's image for p.
func (b *baseImage) forPlatform(p v1.Platform) (v1.Image, error) {
	if b.own {
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		return mutate.Append(img, mutate.Addendum{Layer: b.layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "tunnel deploy --build", Comment: "base"}})
	}
	if b.image != nil {
		cf, err := b.image.ConfigFile()
		if err != nil {
			return nil, err
		}
		if cf.OS != p.OS || cf.Architecture != p.Architecture {
			return nil, fmt.Errorf("base image %s is for %s/%s only", b.ref, cf.OS, cf.Architecture)
		}
		return b.image, nil
	}
	im, err := b.index.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(p) {
			return b.index.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("base image %s has no image for %s", b.ref, p)
}

// authKeychain is the usual credential chain: ~/.docker/config.json,
// $DOCKER_CONFIG, credential helpers.
func authKeychain() authn.Keychain { return authn.DefaultKeychain }

// push writes idx to repo as REPO:VERSION-DIGEST12 unless the registry
// has that digest already (nothing written), or on a dry run (nothing
// written either). A tag names one content only, so it is never moved
// off an image a cluster runs, which registry clean-ups keep by its tags.
func push(ctx context.Context, repo name.Repository, version string, idx v1.ImageIndex, dryRun bool, ropts []remote.Option, progress func(string)) (Result, error) {
	d, err := idx.Digest()
	if err != nil {
		return Result{}, err
	}
	t := repo.Tag(Tag(version, d))
	r := Result{Image: repo.Digest(d.String()).String(), Tag: t.String()}
	if _, err := remote.Head(repo.Digest(d.String()), ropts...); err == nil {
		progress(fmt.Sprintf("%s is in the registry already: nothing to push", r.Image))
		r.InRegistry = true
		return r, nil
	}
	if dryRun {
		progress(fmt.Sprintf("would push %s", t))
		return r, nil
	}
	progress(fmt.Sprintf("push %s", t))
	if err := remote.WriteIndex(t, idx, ropts...); err != nil {
		return Result{}, fmt.Errorf("push %s: %w", t, err)
	}
	r.Pushed = true
	return r, nil
}

// Tag is the tag an image of version with digest d gets: the version made
// a tag (what a tag may not hold becomes "_"; "dev" when empty) and the
// digest's first 12 hex digits.
func Tag(version string, d v1.Hash) string {
	var b strings.Builder
	for i, r := range version {
		ok := r == '_' || r == '.' || r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')
		if !ok || (i == 0 && (r == '.' || r == '-')) {
			r = '_'
		}
		b.WriteRune(r)
	}
	v := b.String()
	if v == "" {
		v = "dev"
	}
	return v[:min(len(v), 128-13)] + "-" + d.Hex[:12]
}
