package release

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// AgentBuild says how to build the agent image of a source tree.
type AgentBuild struct {
	Dir       string    // the module's folder
	WorkDir   string    // where the binaries are built
	Version   string    // "" for the tree's own (ReadSource)
	Platforms []string  // linux/ARCH; default linux/amd64 and linux/arm64
	CACerts   string    // the bundle the image carries; default Debian's
	Source    string    // for the labels; default the module path
	Progress  io.Writer // a line per binary; nil for none
}

// BuildAgentImage builds tunnel-agent for each platform and the image of
// them. The binaries carry the version only: the agent is the same
// whatever registry it is pushed to, so one commit gives one digest.
func BuildAgentImage(ctx context.Context, b AgentBuild) (ImageOptions, v1.ImageIndex, error) {
	src := ReadSource(ctx, b.Dir)
	if b.Version != "" {
		src.Version = b.Version
	}
	if len(b.Platforms) == 0 {
		b.Platforms = []string{"linux/amd64", "linux/arm64"}
	}
	if b.CACerts == "" {
		b.CACerts = "/etc/ssl/certs/ca-certificates.crt"
	}
	if b.Source == "" {
		b.Source = "tunnel.dev/tunnel"
	}
	if b.Progress == nil {
		b.Progress = io.Discard
	}
	ca, err := os.ReadFile(b.CACerts)
	if err != nil {
		return ImageOptions{}, nil, fmt.Errorf("read the CA bundle for the agent image (Debian's ca-certificates package has it): %w", err)
	}
	opt := ImageOptions{Version: src.Version, Revision: src.Revision, Source: b.Source, Created: src.Time, CACerts: ca, Binaries: map[string]string{}}
	for _, p := range b.Platforms {
		goos, goarch, ok := strings.Cut(p, "/")
		if !ok || goos != "linux" {
			return opt, nil, fmt.Errorf("agent platform %q: want linux/ARCH", p)
		}
		out := filepath.Join(b.WorkDir, "agent-"+src.Version, goarch, "tunnel-agent")
		fmt.Fprintf(b.Progress, "building tunnel-agent %s for %s...\n", src.Version, p)
		if err := Binary(ctx, b.Dir, "./cmd/tunnel-agent", goos, goarch, out, Stamp{Version: src.Version}); err != nil {
			return opt, nil, err
		}
		opt.Binaries[p] = out
	}
	idx, err := AgentImage(opt)
	return opt, idx, err
}
