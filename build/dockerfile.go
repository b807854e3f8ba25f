package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrNoBuilder says what a Dockerfile needs that this machine lacks.
var ErrNoBuilder = errors.New("building a Dockerfile needs BuildKit (buildctl with $BUILDKIT_HOST) or docker with buildx, and neither answers here; a Go main package needs neither")

// probeTimeout bounds asking a builder whether it answers.
const probeTimeout = 5 * time.Second

// dockerfileDir says whether pkg (relative to dir) is a folder with a
// Dockerfile and no Go files: a service that is not Go.
func dockerfileDir(dir, pkg string) (string, bool) {
	d := filepath.Join(dir, pkg)
	if _, err := os.Stat(filepath.Join(d, "Dockerfile")); err != nil {
		return "", false
	}
	gofiles, _ := filepath.Glob(filepath.Join(d, "*.go"))
	return d, len(gofiles) == 0
}

// builder is a command that builds a Dockerfile's folder for platforms
// into an OCI layout tarball, with every time set to SOURCE_DATE_EPOCH
// and no attestations, so the same folder gives the same digest.
type builder struct {
	name string
	args func(dir, out string, platforms []string) []string
}

// dockerBuilder is BuildKit's own client when $BUILDKIT_HOST names a
// daemon that answers, else docker buildx when docker answers.
func dockerBuilder(ctx context.Context) (*builder, error) {
	answers := func(cmd string, args ...string) bool {
		if _, err := exec.LookPath(cmd); err != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		return exec.CommandContext(ctx, cmd, args...).Run() == nil
	}
	if os.Getenv("BUILDKIT_HOST") != "" && answers("buildctl", "debug", "workers") {
		return &builder{name: "buildctl", args: func(dir, out string, platforms []string) []string {
			return []string{"build", "--frontend", "dockerfile.v0", "--local", "context=" + dir, "--local", "dockerfile=" + dir,
				"--opt", "platform=" + strings.Join(platforms, ","), "--opt", "build-arg:SOURCE_DATE_EPOCH=0",
				"--output", "type=oci,dest=" + out + ",rewrite-timestamp=true"}
		}}, nil
	}
	if answers("docker", "buildx", "version") && answers("docker", "info") {
		return &builder{name: "docker", args: func(dir, out string, platforms []string) []string {
			return []string{"buildx", "build", "--platform", strings.Join(platforms, ","), "--provenance=false", "--sbom=false",
				"--output", "type=oci,dest=" + out + ",rewrite-timestamp=true", dir}
		}}, nil
	}
	return nil, ErrNoBuilder
}

// dockerfile builds the folder d with b and returns its image index; it
// is pushed as a Go build's is.
func dockerfile(ctx context.Context, b *builder, d string, platforms []v1.Platform, tmp string, progress func(string)) (v1.ImageIndex, error) {
	var ps []string
	for _, p := range platforms {
		ps = append(ps, p.String())
	}
	out, err := os.MkdirTemp(tmp, "oci-")
	if err != nil {
		return nil, err
	}
	progress(fmt.Sprintf("build %s with %s for %s", d, b.name, strings.Join(ps, ",")))
	cmd := exec.CommandContext(ctx, b.name, b.args(d, filepath.Join(out, "image.tar"), ps)...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build %s with %s: %s", d, b.name, lastLine(stderr.String(), err))
	}
	idx, err := readLayout(filepath.Join(out, "image.tar"), filepath.Join(out, "layout"))
	if err != nil {
		return nil, fmt.Errorf("build %s with %s: %w", d, b.name, err)
	}
	return idx, nil
}

// readLayout unpacks an OCI layout tarball into dir and returns the image
// it holds as an index (one image is wrapped in one).
func readLayout(tarball, dir string) (v1.ImageIndex, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read the OCI layout: %w", err)
		}
		rel := filepath.Clean(h.Name)
		if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("the OCI layout names %q, outside itself", h.Name)
		}
		p := filepath.Join(dir, rel)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			w, err := os.Create(p)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
		}
	}
	outer, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read the OCI layout: %w", err)
	}
	im, err := outer.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		return nil, fmt.Errorf("the OCI layout holds %d images, want one", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.MediaType.IsIndex() {
		return outer.ImageIndex(d.Digest)
	}
	img, err := outer.Image(d.Digest)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	p := v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}}), nil
}

// lastLine is what a builder said last (its error), or err.
func lastLine(stderr string, err error) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		return l
	}
	return err.Error()
}
