package release

import (
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func fakeOptions(t *testing.T) ImageOptions {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		p := filepath.Join(dir, arch)
		if err := os.WriteFile(p, []byte("agent for "+arch), 0o600); err != nil {
			t.Fatal(err)
		}
		bins["linux/"+arch] = p
	}
	return ImageOptions{
		Version: "v1.2.3", Revision: "abc", Source: "tunnel.dev/tunnel",
		Created: time.Unix(1700000000, 0), Binaries: bins, CACerts: []byte("-----BEGIN CERTIFICATE-----\n"),
	}
}

func digest(t *testing.T, opt ImageOptions) v1.Hash {
	t.Helper()
	idx, err := AgentImage(opt)
	if err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestAgentImageIsAnOCIIndexOfNonRootImages(t *testing.T) {
	opt := fakeOptions(t)
	idx, err := AgentImage(opt)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := idx.MediaType(); mt != types.OCIImageIndex {
		t.Errorf("index media type %s", mt)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got := im.Annotations["org.opencontainers.image.version"]; got != "v1.2.3" {
		t.Errorf("index version annotation %q", got)
	}
	var archs []string
	for _, m := range im.Manifests {
		archs = append(archs, m.Platform.OS+"/"+m.Platform.Architecture)
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != m.Platform.Architecture || cf.OS != "linux" {
			t.Errorf("config says %s/%s under %s", cf.OS, cf.Architecture, m.Platform)
		}
		if cf.Config.User != "65532:65532" || cf.Config.Entrypoint[0] != AgentPath {
			t.Errorf("user %q, entrypoint %v", cf.Config.User, cf.Config.Entrypoint)
		}
		for _, k := range []string{"version", "revision", "source", "created"} {
			if cf.Config.Labels["org.opencontainers.image."+k] == "" {
				t.Errorf("no %s label: %v", k, cf.Config.Labels)
			}
		}
		layers, _ := img.Layers()
		if len(layers) != 2 {
			t.Errorf("%d layers, want base and binary", len(layers))
		}
		if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
			t.Errorf("layer media type %s", mt)
		}
	}
	if len(archs) != 2 || archs[0] != "linux/amd64" || archs[1] != "linux/arm64" {
		t.Errorf("platforms %v", archs)
	}
}

func TestAgentImageDigestDependsOnlyOnInputs(t *testing.T) {
	a := digest(t, fakeOptions(t))
	// Other files with the same content, written at another time.
	time.Sleep(10 * time.Millisecond)
	if b := digest(t, fakeOptions(t)); a != b {
		t.Errorf("the same inputs gave %s and %s", a, b)
	}
	changed := fakeOptions(t)
	changed.Version = "v1.2.4"
	if c := digest(t, changed); c == a {
		t.Error("another version gave the same digest")
	}
}

func TestAgentImageRefusesBadInput(t *testing.T) {
	opt := fakeOptions(t)
	opt.Binaries = map[string]string{"darwin/arm64": opt.Binaries["linux/arm64"]}
	if _, err := AgentImage(opt); err == nil {
		t.Error("a darwin agent image was built")
	}
	opt = fakeOptions(t)
	opt.Binaries["linux/amd64"] = filepath.Join(t.TempDir(), "missing")
	if _, err := AgentImage(opt); err == nil {
		t.Error("an image was built from a missing binary")
	}
}

func TestPushWritesTheIndexByTagAndReturnsItsDigest(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // the keychain finds no credentials: anonymous
	idx, err := AgentImage(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	ref := AgentRef(u.Host+"/team", "v1.2.3")
	got, err := Push(context.Background(), idx, ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	if got.DigestStr() != want.String() || got.Context().String() != u.Host+"/team/tunnel-agent" {
		t.Errorf("pushed %s, want %s", got, want)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Index(tag)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := pulled.Digest(); d != want {
		t.Errorf("the tag names %s, want %s", d, want)
	}
}

func TestWriteLayoutIsReproducible(t *testing.T) {
	idx, err := AgentImage(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, p := range []string{a, b} {
		if err := WriteLayout(idx, "v1.2.3", time.Unix(1700000000, 0), p); err != nil {
			t.Fatal(err)
		}
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if len(ab) == 0 || string(ab) != string(bb) {
		t.Error("two layouts of one index differ")
	}
}
