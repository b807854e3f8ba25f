// Package release builds what tunnel ships: the agent image as a
// multi-platform OCI index, the binaries for every platform, and their
// checksums; and it pushes the image to a registry.
package release

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// AgentPath is where the agent binary sits in its image; the image's
// entrypoint, so the manifests name only the verb (manager, sidecar).
const AgentPath = "/tunnel-agent"

// AgentRepository is the agent image's name under a registry prefix:
// REGISTRY/tunnel-agent:VERSION.
const AgentRepository = "tunnel-agent"

// NonRoot is the user the agent runs as, as the manifests' securityContext
// also says: the image must not need root.
const NonRoot = 65532

// ImageOptions describe the agent image.
type ImageOptions struct {
	Version  string // the version both the binary and the image's labels carry
	Revision string // the source's commit
	Source   string // where the source lives
	// Created is the image's creation time; the commit's time, so the same
	// commit gives the same digest.
	Created time.Time
	// Binaries maps a platform ("linux/amd64") to a static tunnel-agent
	// built for it.
	Binaries map[string]string
	// CACerts is the PEM bundle the agent trusts (a cluster's registry or
	// Prometheus behind TLS); written to /etc/ssl/certs, where Go looks.
	CACerts []byte
}

// Labels are the OCI annotations the image's config and index carry.
func (o ImageOptions) Labels() map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":    "tunnel-agent",
		"org.opencontainers.image.version":  o.Version,
		"org.opencontainers.image.revision": o.Revision,
		"org.opencontainers.image.source":   o.Source,
		"org.opencontainers.image.created":  o.Created.UTC().Format(time.RFC3339),
	}
	for k, v := range l {
		if v == "" {
			delete(l, k)
		}
	}
	return l
}

// AgentImage builds the agent image: one manifest per platform, each a base
// layer (CA certificates, a passwd naming the non-root user) that all
// platforms share and a layer with that platform's binary, in an OCI index.
// Every file has a fixed time and owner, so the same inputs give the same
// digest.
func AgentImage(opt ImageOptions) (v1.ImageIndex, error) {
	if len(opt.Binaries) == 0 {
		return nil, fmt.Errorf("no agent binaries to put in the image")
	}
	if len(opt.CACerts) == 0 {
		return nil, fmt.Errorf("no CA certificates to put in the image")
	}
	mtime := opt.Created.UTC()
	base, err := BaseLayer(opt.CACerts, mtime)
	if err != nil {
		return nil, err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, platform := range slices.Sorted(maps.Keys(opt.Binaries)) {
		p, err := v1.ParsePlatform(platform)
		if err != nil || p.OS != "linux" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want linux/ARCH", platform)
		}
		img, err := platformImage(opt, *p, base, opt.Binaries[platform], mtime)
		if err != nil {
			return nil, fmt.Errorf("build the %s image: %w", platform, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: p},
		})
	}
	ann, ok := mutate.Annotations(idx, opt.Labels()).(v1.ImageIndex)
	if !ok {
		return nil, fmt.Errorf("annotate the index: not an index")
	}
	return ann, nil
}

// BaseLayer is what a static binary needs beside it: a passwd and group
// naming the non-root user, the CA bundle where Go looks (none when
// caCerts is empty), and a /tmp.
func BaseLayer(caCerts []byte, mtime time.Time) (v1.Layer, error) {
	files := []File{
		{Name: "etc/", Dir: true},
		{Name: "etc/passwd", Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRoot, NonRoot)},
		{Name: "etc/group", Data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", NonRoot)},
	}
	if len(caCerts) > 0 {
		files = append(files, File{Name: "etc/ssl/", Dir: true}, File{Name: "etc/ssl/certs/", Dir: true},
			File{Name: "etc/ssl/certs/ca-certificates.crt", Data: caCerts})
	}
	l, err := Layer(append(files, File{Name: "tmp/", Dir: true, Mode: 0o1777}), mtime)
	if err != nil {
		return nil, fmt.Errorf("build the base layer: %w", err)
	}
	return l, nil
}

func platformImage(opt ImageOptions, p v1.Platform, base v1.Layer, binary string, mtime time.Time) (v1.Image, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("read the agent binary: %w", err)
	}
	bin, err := Layer([]File{{Name: strings.TrimPrefix(AgentPath, "/"), Data: data, Mode: 0o755}}, mtime)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, bin)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	RunAsNonRoot(cf, p, mtime, AgentPath, "PATH=/", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
	cf.Config.Labels = opt.Labels()
	cf.History = nil
	return mutate.ConfigFile(img, cf)
}

// RunAsNonRoot makes cf a static binary's config over BaseLayer: for p,
// made at mtime, entrypoint run as NonRoot from /, with env alone.
func RunAsNonRoot(cf *v1.ConfigFile, p v1.Platform, mtime time.Time, entrypoint string, env ...string) {
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Cmd = nil
	cf.Config.User = fmt.Sprintf("%d:%d", NonRoot, NonRoot)
	cf.Config.WorkingDir = "/"
	cf.Config.Env = env
}

// File is one entry of a Layer: a folder (Name ends in "/") or a file.
type File struct {
	Name string
	Data []byte
	Dir  bool
	Mode int64 // default 0755 for a folder, 0644 for a file
}

// Layer is a gzipped OCI layer of files, owned by root, all at mtime, so
// the same files give the same digest.
func Layer(files []File, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: f.Mode, ModTime: mtime, Uname: "root", Gname: "root"}
		if f.Dir {
			h.Typeflag = tar.TypeDir
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
