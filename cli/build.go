package cli

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/build"
	"tunnel.dev/tunnel/deploy"
	"tunnel.dev/tunnel/release"
)

// buildFlags are --build's: what is built, on what, for where, and where
// it goes.
type buildFlags struct {
	on        bool
	registry  string
	platforms []string
	base      string
}

func (b *buildFlags) add(f *pflag.FlagSet) {
	f.BoolVar(&b.on, "build", false, "build the Go main packages values.yaml's build: names into images, push them, and fill their parameters by digest")
	b.addWhere(f)
}

// addWhere adds the flags that say where and how a build goes.
func (b *buildFlags) addWhere(f *pflag.FlagSet) {
	f.StringVar(&b.registry, "registry", "", "where --build pushes: HOST[:PORT][/PATH] the cluster's nodes pull from (default $"+manifest.RegistryEnv+", else the build's)")
	f.StringSliceVar(&b.platforms, "platform", nil, "OS/ARCH to build for (repeatable; default the platforms of the cluster's nodes)")
	f.StringVar(&b.base, "base-image", "", "the image --build builds on (default tunnel's own: CA certificates and a non-root user, nothing else)")
}

// targets is what dir's values.yaml builds, checked against the
// templates before anything is built: each parameter named, and the
// manifests rendering with a stand-in for each image.
func (b *buildFlags) targets(dir string, sets map[string]string) (map[string]string, error) {
	targets, err := deploy.BuildTargets(dir)
	if err != nil {
		return nil, err
	}
	check := maps.Clone(sets)
	for param := range targets {
		if _, ok := sets[param]; ok {
			return nil, fmt.Errorf("--set %s and values.yaml's build: both give %s: drop one", param, param)
		}
		check[param] = "registry.invalid/built@sha256:" + strings.Repeat("0", 64)
	}
	if _, err := deploy.Render(dir, check); err != nil {
		return nil, err
	}
	return targets, nil
}

// image builds the one image dir's values.yaml names, for a canary.
func (b *buildFlags) image(ctx context.Context, cs kubernetes.Interface, dir string, progress func(string)) (string, error) {
	targets, err := deploy.BuildTargets(dir)
	if err != nil {
		return "", err
	}
	if len(targets) != 1 {
		return "", fmt.Errorf("--build %s: values.yaml builds %d images (%s); a canary tries one", dir, len(targets), strings.Join(slices.Sorted(maps.Keys(targets)), ", "))
	}
	built, err := b.run(ctx, cs, dir, targets, false, progress, progress)
	if err != nil {
		return "", err
	}
	return built[0].Image, nil
}

// run builds targets and returns the images that fill their parameters,
// by digest. progress hears each step, warn what the user must read
// whatever the output format.
func (b *buildFlags) run(ctx context.Context, cs kubernetes.Interface, dir string, targets map[string]string, dryRun bool, progress, warn func(string)) ([]build.Result, error) {
	// Not the registry this tunnel was built with: that is where the
	// agent comes from, and a team's code must not go there unasked.
	registry := cmp.Or(strings.TrimSuffix(b.registry, "/"), strings.TrimSuffix(os.Getenv(manifest.RegistryEnv), "/"))
	if registry == "" {
		return nil, fmt.Errorf("--build needs the registry the cluster's nodes pull from: pass --registry HOST/PATH or set %s", manifest.RegistryEnv)
	}
	platforms, err := b.platformsFor(ctx, cs, warn)
	if err != nil {
		return nil, err
	}
	folder, err := build.Folder(dir)
	if err != nil {
		return nil, err
	}
	return build.Build(ctx, targets, build.Options{Dir: folder, Registry: registry, Platforms: platforms, Base: b.base,
		Version: release.ReadSource(ctx, folder).Version, DryRun: dryRun, Progress: progress})
}

// platformsFor is --platform, or the platforms the cluster's nodes
// report; one who may not list nodes gets this machine's architecture,
// and a line saying so.
func (b *buildFlags) platformsFor(ctx context.Context, cs kubernetes.Interface, warn func(string)) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, s := range b.platforms {
		p, err := v1.ParsePlatform(s)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("--platform %q: want OS/ARCH, e.g. linux/amd64", s)
		}
		out = append(out, *p)
	}
	if len(out) > 0 {
		return out, nil
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if apierrors.IsForbidden(err) {
		p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
		warn(fmt.Sprintf("you may not list the cluster's nodes, so building for %s only (--platform names others)", p))
		return []v1.Platform{p}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the nodes' platforms (or name them with --platform): %w", err)
	}
	others := 0
	for _, n := range nodes.Items {
		p := v1.Platform{OS: n.Status.NodeInfo.OperatingSystem, Architecture: n.Status.NodeInfo.Architecture}
		switch {
		case p.OS != "linux" || p.Architecture == "":
			others++
		case !slices.ContainsFunc(out, func(q v1.Platform) bool { return q.Equals(p) }):
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("none of the cluster's nodes reports a linux platform: name one with --platform linux/amd64")
	}
	if others > 0 {
		warn(fmt.Sprintf("%d nodes are not linux; the images are for linux only", others))
	}
	return out, nil
}
