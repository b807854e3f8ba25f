//go:build linux

package lab

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuildImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "echo-bin")
	content := []byte("#!not really a binary\n")
	if err := os.WriteFile(bin, content, 0o600); err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(dir, "echo.tar")
	spec := ImageSpec{
		Ref:        "tunnel.dev/lab/echo:dev",
		Binary:     bin,
		Path:       "/usr/local/bin/echo",
		Entrypoint: []string{"/usr/local/bin/echo", "-http", ":8080"},
		Env:        []string{"A=b"},
	}
	if err := BuildImage(spec, dst); err != nil {
		t.Fatalf("BuildImage: %v", err)
	}

	tag, err := name.NewTag(spec.Ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(dst, &tag)
	if err != nil {
		t.Fatalf("read back tarball: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform = %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if !slices.Equal(cf.Config.Entrypoint, spec.Entrypoint) {
		t.Errorf("entrypoint = %q, want %q", cf.Config.Entrypoint, spec.Entrypoint)
	}
	if !slices.Equal(cf.Config.Env, spec.Env) {
		t.Errorf("env = %q, want %q", cf.Config.Env, spec.Env)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatalf("layers: %v", err)
	}
	if len(layers) != 1 || len(cf.RootFS.DiffIDs) != 1 {
		t.Fatalf("got %d layers and %d diff IDs, want 1 each", len(layers), len(cf.RootFS.DiffIDs))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatalf("open layer: %v", err)
	}
	defer rc.Close()

	var dirs []string
	found := false
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read layer: %v", err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want root", h.Name, h.Uid, h.Gid)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			dirs = append(dirs, h.Name)
		case tar.TypeReg:
			if h.Name != "usr/local/bin/echo" {
				t.Errorf("unexpected file %s", h.Name)
				continue
			}
			found = true
			if h.FileInfo().Mode().Perm() != 0o755 {
				t.Errorf("binary mode = %v, want 0755", h.FileInfo().Mode().Perm())
			}
			got, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read binary: %v", err)
			}
			if !bytes.Equal(got, content) {
				t.Errorf("binary content = %q, want %q", got, content)
			}
		}
	}
	if !found {
		t.Error("binary not in layer")
	}
	if want := []string{"usr/", "usr/local/", "usr/local/bin/"}; !slices.Equal(dirs, want) {
		t.Errorf("directories = %q, want %q", dirs, want)
	}

	// Only the tarball is left behind: the temp file was renamed away.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want the binary and the tarball", len(entries))
	}
}

func TestBuildImageDefaultEntrypoint(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause-bin")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "pause.tar")
	if err := BuildImage(ImageSpec{Ref: "tunnel.dev/lab/pause:dev", Binary: bin, Path: "/pause"}, dst); err != nil {
		t.Fatalf("BuildImage: %v", err)
	}
	img, err := tarball.ImageFromPath(dst, nil)
	if err != nil {
		t.Fatalf("read back tarball: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint = %q, want [/pause]", cf.Config.Entrypoint)
	}
}

func TestBuildImageRejects(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	digest := "tunnel.dev/lab/echo@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	for _, spec := range []ImageSpec{
		{Ref: "Not A Ref", Binary: bin, Path: "/echo"},
		{Ref: digest, Binary: bin, Path: "/echo"},
		{Ref: "tunnel.dev/lab/echo:dev", Binary: bin, Path: "echo"},
		{Ref: "tunnel.dev/lab/echo:dev", Binary: bin, Path: "/"},
		{Ref: "tunnel.dev/lab/echo:dev", Binary: filepath.Join(dir, "missing"), Path: "/echo"},
		{Ref: "tunnel.dev/lab/echo:dev", Binary: dir, Path: "/echo"},
	} {
		dst := filepath.Join(dir, "out.tar")
		if err := BuildImage(spec, dst); err == nil {
			t.Errorf("BuildImage(%+v) succeeded, want an error", spec)
		}
		if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("BuildImage(%+v) left %s behind", spec, dst)
		}
	}
}
