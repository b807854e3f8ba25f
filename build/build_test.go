package build

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// module writes a Go module with a main package at cmd/hello and a
// library at lib, and returns its folder.
func module(t *testing.T, greeting string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range map[string]string{
		"go.mod":            "module example.com/shop\n\ngo 1.22\n",
		"cmd/hello/main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + greeting + "\") }\n",
		"lib/lib.go":        "package lib\n\nconst X = 1\n",
	} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testRegistry is an in-memory registry behind TLS, and the options that
// reach it.
func testRegistry(t *testing.T) (string, []remote.Option) {
	t.Helper()
	srv := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "https://"), []remote.Option{remote.WithTransport(srv.Client().Transport)}
}

func options(t *testing.T, dir, reg string, ropts []remote.Option) Options {
	return Options{
		Dir: dir, Registry: reg + "/team", Version: "v1",
		Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}},
		CACerts:   []byte("-----BEGIN CERTIFICATE-----\n"), Remote: ropts,
	}
}

// TestBuildIsReproducibleAndPushesOnce: a build makes an index with an
// image per platform, its binary the entrypoint as a non-root user; the
// same source again gives the same digest and pushes nothing; a change
// gives another digest.
func TestBuildIsReproducibleAndPushesOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Go binaries")
	}
	ctx := context.Background()
	reg, ropts := testRegistry(t)
	dir := module(t, "hello")
	opt := options(t, dir, reg, ropts)
	first, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 1 || !first[0].Pushed || first[0].Param != "image" || !strings.HasPrefix(first[0].Image, reg+"/team/hello@sha256:") {
		t.Fatalf("first build: %+v", first)
	}
	ref, err := name.NewDigest(first[0].Image)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(ref, ropts...)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 2 {
		t.Fatalf("index: %v %+v", err, im)
	}
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != d.Platform.Architecture || cf.OS != "linux" ||
			strings.Join(cf.Config.Entrypoint, " ") != "/app/hello" || cf.Config.User != "65532:65532" {
			t.Errorf("%s: config %+v", d.Platform, cf.Config)
		}
	}

	again, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Image != first[0].Image || again[0].Pushed || !again[0].InRegistry {
		t.Errorf("the same source again: %+v, want %s and nothing pushed", again[0], first[0].Image)
	}
	// The platforms in another order, twice: the same index.
	opt.Platforms = []v1.Platform{{OS: "linux", Architecture: "arm64"}, {OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	if swapped, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, opt); err != nil || swapped[0].Image != first[0].Image {
		t.Errorf("the platforms in another order: %v %+v, want %s", err, swapped, first[0].Image)
	}
	if !strings.HasPrefix(first[0].Tag, reg+"/team/hello:v1-") || !strings.Contains(first[0].Image, strings.TrimPrefix(first[0].Tag, reg+"/team/hello:v1-")) {
		t.Errorf("tag %s: want v1- and the digest's start", first[0].Tag)
	}

	// A dry run of changed source says what it would push, and pushes nothing.
	dry := options(t, module(t, "hello, dry"), reg, ropts)
	dry.DryRun = true
	if r, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, dry); err != nil || r[0].Pushed || r[0].InRegistry {
		t.Errorf("dry run: %v %+v", err, r)
	} else if _, err := remote.Head(mustRef(t, r[0].Image), ropts...); err == nil {
		t.Errorf("a dry run pushed %s", r[0].Image)
	}

	changed, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, options(t, module(t, "hello, world"), reg, ropts))
	if err != nil {
		t.Fatal(err)
	}
	if changed[0].Image == first[0].Image || !changed[0].Pushed {
		t.Errorf("changed source: %+v, want a new digest pushed", changed[0])
	}
}

// TestBuildRefusesWhatIsNoCommand: a library, a missing folder and a
// package that does not compile are each one error, and nothing is pushed.
func TestBuildRefusesWhatIsNoCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	ctx := context.Background()
	reg, ropts := testRegistry(t)
	dir := module(t, "hello")
	if err := os.WriteFile(filepath.Join(dir, "cmd", "broken.go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "cmd", "bad"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cmd", "bad", "main.go"), []byte("package main\n\nfunc main() { undefined() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for pkg, want := range map[string]string{
		"./lib":      "is package lib, not a main package",
		"./cmd/none": "build ./cmd/none:",
		"./cmd/bad":  "undefined",
	} {
		_, err := Build(ctx, map[string]string{"image": pkg, "app": "./cmd/hello"}, options(t, dir, reg, ropts))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("%s: %v, want one line with %q", pkg, err, want)
		}
	}
	if repos, err := remote.Catalog(ctx, mustRegistry(t, reg), ropts...); err != nil || len(repos) != 0 {
		t.Errorf("a failed build pushed %v (%v), want nothing", repos, err)
	}
	// Two commands of one name would share a repository.
	if err := os.MkdirAll(filepath.Join(dir, "other", "hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other", "hello", "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, map[string]string{"a": "./cmd/hello", "b": "./other/hello"}, options(t, dir, reg, ropts)); err == nil || !strings.Contains(err.Error(), "would both be") {
		t.Errorf("two commands named hello: %v", err)
	}
	for _, r := range []string{"myteam", "", "myteam/apps"} {
		o := options(t, dir, reg, ropts)
		o.Registry = r
		if _, err := Build(ctx, map[string]string{"a": "./cmd/hello"}, o); err == nil || !strings.Contains(err.Error(), "want HOST") {
			t.Errorf("registry %q: %v, want it refused", r, err)
		}
	}
}

// TestBuildOnABaseImage: a base from the registry keeps its layers, and
// each platform takes its own.
func TestBuildOnABaseImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Go binaries")
	}
	ctx := context.Background()
	reg, ropts := testRegistry(t)
	dir := module(t, "hello")
	// A base made by a build of its own: tunnel's layer and a command.
	base, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, options(t, dir, reg, ropts))
	if err != nil {
		t.Fatal(err)
	}
	opt := options(t, dir, reg+"/other", ropts)
	opt.Base = base[0].Image
	on, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(mustRef(t, on[0].Image), append(ropts, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"}))...)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 3 {
		t.Fatalf("layers: %v, %d, want the base's two and the binary's", err, len(layers))
	}
	cf, _ := img.ConfigFile()
	if cf.Architecture != "arm64" || !strings.HasPrefix(strings.Join(cf.Config.Env, " "), "PATH=/app:") {
		t.Errorf("config: %s %v", cf.Architecture, cf.Config.Env)
	}

	opt.Platforms = []v1.Platform{{OS: "linux", Architecture: "s390x"}}
	if _, err := Build(ctx, map[string]string{"image": "./cmd/hello"}, opt); err == nil || !strings.Contains(err.Error(), "has no image for linux/s390x") {
		t.Errorf("a platform the base lacks: %v", err)
	}
}

func TestRepoName(t *testing.T) {
	for in, want := range map[string]string{"shop": "shop", "Shop_API": "shop_api", "my app!": "my-app", "--": "app"} {
		if got := repoName(in); got != want {
			t.Errorf("repoName(%q) = %q, want %q", in, got, want)
		}
	}
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	for in, want := range map[string]string{
		"v1.2.3":       "v1.2.3-abababababab",
		"v1.2.3+dirty": "v1.2.3_dirty-abababababab",
		"-x":           "_x-abababababab",
		"":             "dev-abababababab",
	} {
		if got := Tag(in, d); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Tag(strings.Repeat("a", 200), d); len(got) != 128 {
		t.Errorf("a 200-character version gives a %d-character tag", len(got))
	}
	for in, want := range map[string]string{"example.com/shop/cmd/api": "api", "example.com/tool/v2": "tool", "example.com/v2": "example.com"} {
		if got := commandName(in); got != want {
			t.Errorf("commandName(%q) = %q, want %q", in, got, want)
		}
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDockerfileWithoutABuilder: a folder with a Dockerfile and no Go is
// built by BuildKit or docker; where neither is, one sentence names them,
// before anything is built or pushed.
func TestDockerfileWithoutABuilder(t *testing.T) {
	reg, ropts := testRegistry(t)
	dir := module(t, "hello")
	if err := os.MkdirAll(filepath.Join(dir, "web"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "web", "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir()) // no buildctl, no docker
	t.Setenv("BUILDKIT_HOST", "")
	_, err := Build(context.Background(), map[string]string{"web": "./web"}, options(t, dir, reg, ropts))
	if !errors.Is(err, ErrNoBuilder) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want one line wrapping ErrNoBuilder", err)
	}
}

func mustRegistry(t *testing.T, s string) name.Registry {
	t.Helper()
	r, err := name.NewRegistry(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRootsPEM: tunnel's own base trusts the Mozilla roots this build
// carries, whatever the building machine trusts.
func TestRootsPEM(t *testing.T) {
	pool := x509.NewCertPool()
	if pem := RootsPEM(); len(pem) < 50000 || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("RootsPEM is %d bytes and does not parse", len(pem))
	}
}
