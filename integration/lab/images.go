//go:build linux

package lab

import (
	"context"
	"fmt"
	"path/filepath"
)

// Images the lab puts into its containerd. None comes from a registry: each
// is one static binary built here.
const (
	PauseImage   = "tunnel.dev/lab/pause:v1"
	CoreDNSImage = "tunnel.dev/lab/coredns:" + CoreDNSVersion
	EchoImage    = "tunnel.dev/lab/echo:dev"     // the test app (integration/testapp)
	AgentImage   = "tunnel.dev/tunnel/agent:dev" // tunnel-agent, as `tunnel install` names it by default
)

// The test app's ports, as integration/testapp serves them.
const (
	EchoHTTPPort  = 8080
	EchoHTTP2Port = 8081
	EchoTCPPort   = 9000
	EchoUDPPort   = 9001
)

// ensureImages builds and imports the lab's images. The ones built from
// this repository are imported every time, so a changed test app reaches
// the cluster; CoreDNS only when containerd lacks it.
func ensureImages(ctx context.Context, p Paths) error {
	dir := p.state("images")
	for _, img := range []struct{ ref, pkg, bin string }{
		{PauseImage, "./integration/pause", "pause"},
		{EchoImage, "./integration/testapp", "echo"},
		{AgentImage, "./cmd/tunnel-agent", "tunnel-agent"},
	} {
		bin := filepath.Join(dir, img.bin)
		if err := BuildBinary(ctx, img.pkg, bin); err != nil {
			return err
		}
		if err := buildAndLoad(ctx, p, ImageSpec{Ref: img.ref, Binary: bin, Path: "/" + img.bin}, dir); err != nil {
			return err
		}
	}
	if !haveImage(ctx, p, CoreDNSImage) {
		bin := filepath.Join(p.Cache, "coredns-"+CoreDNSVersion, "coredns")
		if err := buildAndLoad(ctx, p, ImageSpec{Ref: CoreDNSImage, Binary: bin, Path: "/coredns"}, dir); err != nil {
			return err
		}
	}
	return nil
}

func buildAndLoad(ctx context.Context, p Paths, spec ImageSpec, dir string) error {
	tarball := filepath.Join(dir, filepath.Base(spec.Path)+".tar")
	if err := BuildImage(spec, tarball); err != nil {
		return fmt.Errorf("build image %s: %w", spec.Ref, err)
	}
	return LoadImage(ctx, p, tarball)
}

// BuildAndLoadImage builds an image of one of this repository's commands
// and imports it into the lab, for tests that deploy their own binaries.
func BuildAndLoadImage(ctx context.Context, p Paths, ref, pkg string) error {
	dir := p.state("images")
	name := filepath.Base(pkg)
	bin := filepath.Join(dir, name)
	if err := BuildBinary(ctx, pkg, bin); err != nil {
		return err
	}
	return buildAndLoad(ctx, p, ImageSpec{Ref: ref, Binary: bin, Path: "/" + name}, dir)
}

// EchoVariant imports the test app under tunnel.dev/lab/echo:TAG with env
// (KEY=VALUE, e.g. FAIL_RATE=0.2) in its image config: a "new release"
// that behaves differently, for canary tests.
func EchoVariant(ctx context.Context, p Paths, tag string, env ...string) (string, error) {
	ref := "tunnel.dev/lab/echo:" + tag
	dir := p.state("images")
	spec := ImageSpec{Ref: ref, Binary: filepath.Join(dir, "echo"), Path: "/echo", Env: env}
	tarball := filepath.Join(dir, "echo-"+tag+".tar")
	if err := BuildImage(spec, tarball); err != nil {
		return "", fmt.Errorf("build image %s: %w", ref, err)
	}
	return ref, LoadImage(ctx, p, tarball)
}
