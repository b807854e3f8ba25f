package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stamp is what a build writes into the binaries at link time.
type Stamp struct {
	Version  string
	Registry string // the agent image's default registry prefix; may be empty
}

// LDFlags are the linker flags that stamp s into the version package; an
// empty Stamp leaves the version to what the go command records.
func (s Stamp) LDFlags() string {
	f := "-s -w"
	if s.Version != "" {
		f += " -X tunnel.dev/tunnel/version.version=" + s.Version
	}
	if s.Registry != "" {
		f += " -X tunnel.dev/tunnel/version.registry=" + s.Registry
	}
	return f
}

// Binary builds the command pkg (e.g. "./cmd/tunnel-agent") of the module in
// dir for goos/goarch as a static, reproducible binary at out.
func Binary(ctx context.Context, dir, pkg, goos, goarch, out string, s Stamp) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", s.LDFlags(), "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s for %s/%s: %w\n%s", pkg, goos, goarch, err, b)
	}
	return nil
}

// Source is what the image's labels and the version say of the source tree.
type Source struct {
	Version  string
	Revision string
	Time     time.Time
}

// ReadSource asks git about the tree in dir. The version is `git describe
// --tags --always`; a tree with changes gets "-dirty." and a hash of them, so
// two different dirty trees never push the same tag. Outside git: "dev".
func ReadSource(ctx context.Context, dir string) Source {
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	s := Source{Version: "dev", Time: time.Unix(0, 0).UTC()}
	v, err := git("describe", "--tags", "--always")
	if err != nil {
		return s
	}
	s.Version = v
	s.Revision, _ = git("rev-parse", "HEAD")
	if ct, err := git("log", "-1", "--format=%ct"); err == nil {
		if sec, err := strconv.ParseInt(ct, 10, 64); err == nil {
			s.Time = time.Unix(sec, 0).UTC()
		}
	}
	if status, _ := git("status", "--porcelain", "--untracked-files=all"); status != "" {
		h := sha256.New()
		diff, _ := git("diff", "HEAD", "--binary")
		h.Write([]byte(diff))
		top, _ := git("rev-parse", "--show-toplevel") // status names files from there
		for _, line := range strings.Split(status, "\n") {
			if name, ok := strings.CutPrefix(line, "?? "); ok {
				h.Write([]byte(name))
				if b, err := os.ReadFile(filepath.Join(top, name)); err == nil {
					h.Write(b)
				}
			}
		}
		s.Version += "-dirty." + hex.EncodeToString(h.Sum(nil))[:8]
		s.Revision += "-dirty"
	}
	return s
}
