//go:build linux

package lab

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// labRegistry is the registry's host:port, a constant so image names can
// be; config_test checks it is the node's address and registryPort.
const labRegistry = "10.209.0.1:5000"

// The lab's images. Every one but the pod sandbox is pushed to the lab's
// registry and pulled by the kubelet with the default pull policy, as a
// user's images are. The sandbox (pause) image is imported into containerd:
// it is the node's own, named in containerd's config and needed before any
// pod can start, as a real node has it in its machine image.
const (
	PauseImage   = "tunnel.dev/lab/pause:v1"
	CoreDNSImage = labRegistry + "/lab/coredns:" + CoreDNSVersion
	// EchoImage is the test app (integration/testapp). Its tag is latest,
	// so the default policy pulls it every time: a changed test app reaches
	// the cluster.
	EchoImage = labRegistry + "/lab/echo:latest"
	// PrivateEchoImage is the test app in a private repository: pulling it
	// needs a pull secret with RegistryPuller's password.
	PrivateEchoImage = labRegistry + "/" + PrivatePrefix + "echo:latest"
)

// The test app's ports, as integration/testapp serves them.
const (
	EchoHTTPPort  = 8080
	EchoHTTP2Port = 8081
	EchoTCPPort   = 9000
	EchoUDPPort   = 9001
	// EchoMetricsPort serves orders_total; no Service names it.
	EchoMetricsPort = 9102
)

// ensureImages imports the sandbox image and pushes the lab's own images.
// The ones built from this repository are pushed every time, so a changed
// test app reaches the cluster; CoreDNS only once per lab.
func ensureImages(ctx context.Context, p Paths) error {
	dir := p.state("images")
	pause := filepath.Join(dir, "pause")
	if err := BuildBinary(ctx, "./integration/pause", pause); err != nil {
		return err
	}
	tarball := filepath.Join(dir, "pause.tar")
	if err := BuildImage(ImageSpec{Ref: PauseImage, Binary: pause, Path: "/pause"}, tarball); err != nil {
		return fmt.Errorf("build image %s: %w", PauseImage, err)
	}
	if err := importImage(ctx, p, tarball); err != nil {
		return err
	}
	echo := filepath.Join(dir, "echo")
	if err := BuildBinary(ctx, "./integration/testapp", echo); err != nil {
		return err
	}
	for _, ref := range []string{EchoImage, PrivateEchoImage} {
		if _, err := PushImage(ctx, p, ImageSpec{Ref: ref, Binary: echo, Path: "/echo"}); err != nil {
			return err
		}
	}
	if !inRegistry(ctx, p, CoreDNSImage) {
		bin := filepath.Join(p.Cache, "coredns-"+CoreDNSVersion, "coredns")
		if _, err := PushImage(ctx, p, ImageSpec{Ref: CoreDNSImage, Binary: bin, Path: "/coredns"}); err != nil {
			return err
		}
	}
	return nil
}

// PushImage builds spec's single-binary image and pushes it to the lab's
// registry as the pusher; it returns the image by digest.
func PushImage(ctx context.Context, p Paths, spec ImageSpec) (string, error) {
	img, err := buildImage(spec)
	if err != nil {
		return "", err
	}
	ref, err := name.NewTag(spec.Ref)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", spec.Ref, err)
	}
	opts, err := p.registryOptions(ctx)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		return "", fmt.Errorf("push %s to the lab's registry: %w", spec.Ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return ref.Context().Digest(d.String()).String(), nil
}

func (p Paths) registryOptions(ctx context.Context) ([]remote.Option, error) {
	t, err := RegistryTransport(p)
	if err != nil {
		return nil, err
	}
	kc, err := p.pusher()
	if err != nil {
		return nil, err
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(t), remote.WithAuthFromKeychain(kc)}, nil
}

// inRegistry reports whether the lab's registry has ref.
func inRegistry(ctx context.Context, p Paths, ref string) bool {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false
	}
	opts, err := p.registryOptions(ctx)
	if err != nil {
		return false
	}
	_, err = remote.Head(r, opts...)
	return err == nil
}

// BuildAndPushImage builds an image of one of this repository's commands
// and pushes it to the lab's registry as ref, for tests that deploy their
// own binaries; it returns the image by digest.
func BuildAndPushImage(ctx context.Context, p Paths, ref, pkg string) (string, error) {
	name := filepath.Base(pkg)
	bin := p.state("images", name)
	if err := BuildBinary(ctx, pkg, bin); err != nil {
		return "", err
	}
	return PushImage(ctx, p, ImageSpec{Ref: ref, Binary: bin, Path: "/" + name})
}

// EchoVariant pushes the test app as RegistryHost()/lab/echo:TAG with env
// (KEY=VALUE, e.g. FAIL_RATE=0.2) in its image config: a "new release"
// that behaves differently, for canary tests. It returns the image by
// digest, so no pod can run an older push of the same tag.
func EchoVariant(ctx context.Context, p Paths, tag string, env ...string) (string, error) {
	ref := labRegistry + "/lab/echo:" + tag
	return PushImage(ctx, p, ImageSpec{Ref: ref, Binary: p.state("images", "echo"), Path: "/echo", Env: env})
}
