//go:build linux

package lab

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageSpec describes a single-binary image.
type ImageSpec struct {
	// Ref names the image, e.g. "tunnel.dev/lab/echo:dev". It must be a tag:
	// the tag is written into the tarball so `ctr images import` names it.
	Ref string
	// Binary is the path of a static binary on disk, built for the host
	// architecture.
	Binary string
	// Path is where the binary goes in the image, e.g. "/echo".
	Path string
	// Entrypoint defaults to []string{Path}.
	Entrypoint []string
	// Env is optional, in KEY=value form.
	Env []string
}

// BuildImage writes a docker-format tarball of spec's image to dst, for
// the one image the lab imports into containerd rather than pulls: the pod
// sandbox (pause). dst is replaced atomically, so a concurrent import never
// sees a partial file.
func BuildImage(spec ImageSpec, dst string) error {
	ref, err := name.ParseReference(spec.Ref)
	if err != nil {
		return fmt.Errorf("parse image ref %q: %w", spec.Ref, err)
	}
	if _, ok := ref.(name.Tag); !ok {
		return fmt.Errorf("image ref %q: want a tag, not a digest, so the import is named", spec.Ref)
	}
	img, err := buildImage(spec)
	if err != nil {
		return err
	}
	if err := imageWriteAtomic(ref, img, dst); err != nil {
		return fmt.Errorf("write image %s to %s: %w", spec.Ref, dst, err)
	}
	return nil
}

// buildImage is an empty base plus one layer holding the binary (mode 0755,
// owned by root, with its parent directories).
func buildImage(spec ImageSpec) (v1.Image, error) {
	if spec.Binary == "" {
		return nil, fmt.Errorf("image %s: no binary given", spec.Ref)
	}
	if !path.IsAbs(spec.Path) || path.Clean(spec.Path) != spec.Path || spec.Path == "/" {
		return nil, fmt.Errorf("image %s: path %q must be a clean absolute file path", spec.Ref, spec.Path)
	}
	layerTar, err := imageLayerTar(spec.Binary, spec.Path)
	if err != nil {
		return nil, fmt.Errorf("build layer for image %s: %w", spec.Ref, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("make layer for image %s: %w", spec.Ref, err)
	}
	img, err := imageWithConfig(spec)
	if err != nil {
		return nil, fmt.Errorf("configure image %s: %w", spec.Ref, err)
	}
	// Layers are appended after the config is set so their diff IDs land in
	// the config's rootfs.
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return nil, fmt.Errorf("append layer to image %s: %w", spec.Ref, err)
	}
	return img, nil
}

// imageWithConfig returns an empty image whose config carries the platform
// (containerd refuses images for another platform) and how to run the binary.
func imageWithConfig(spec ImageSpec) (v1.Image, error) {
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read empty config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Config.Entrypoint = spec.Entrypoint
	if len(cf.Config.Entrypoint) == 0 {
		cf.Config.Entrypoint = []string{spec.Path}
	}
	cf.Config.Env = spec.Env
	cf.Config.WorkingDir = "/"
	img, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// imageLayerTar returns an uncompressed tar holding the parent directories of
// dstPath and the binary at dstPath. It is built in memory: test binaries are
// a few tens of megabytes, and the layer is read more than once.
func imageLayerTar(binary, dstPath string) ([]byte, error) {
	f, err := os.Open(binary)
	if err != nil {
		return nil, fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat binary: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("binary %s is not a regular file", binary)
	}

	// A fixed mtime makes the same binary always yield the same layer
	// digest, which keeps re-imports cheap.
	modTime := time.Unix(0, 0)
	var buf bytes.Buffer
	buf.Grow(int(fi.Size()) + 64<<10)
	tw := tar.NewWriter(&buf)

	rel := strings.TrimPrefix(dstPath, "/")
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir,
			Name:     strings.Join(parts[:i], "/") + "/",
			Mode:     0o755,
			Uname:    "root",
			Gname:    "root",
			ModTime:  modTime,
		}); err != nil {
			return nil, fmt.Errorf("write directory entry: %w", err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     rel,
		Size:     fi.Size(),
		Mode:     0o755,
		Uname:    "root",
		Gname:    "root",
		ModTime:  modTime,
	}); err != nil {
		return nil, fmt.Errorf("write binary entry: %w", err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return nil, fmt.Errorf("copy binary %s: %w", binary, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("finish layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// imageWriteAtomic writes the tarball to a temp file beside dst and renames it
// into place.
func imageWriteAtomic(ref name.Reference, img v1.Image, dst string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tarball.Write(ref, img, tmp); err != nil {
		return fmt.Errorf("write tarball: %w", err)
	}
	// CreateTemp makes the file 0600; importers may run as another user.
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("chmod temp file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync temp file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close temp file: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}
