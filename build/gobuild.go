// Package build turns a service's Go main packages into images in the
// user's registry, the way ko does: static binaries built with the go
// command, packed with go-containerregistry over a small base (no Docker),
// one image per node platform in an OCI index, pushed and named by digest.
// The same source gives the same digest, so a build that changed nothing
// pushes nothing and a deploy of it changes nothing in the cluster.
package build

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNoGo is returned when the go command is not on PATH.
var ErrNoGo = errors.New("the go command is not on PATH: install Go (https://go.dev/dl) to build a service from source")

// mainPackage checks that pkg (a path relative to dir, ./cmd/shop) is a
// main package of the module dir is in, and returns its import path.
func mainPackage(ctx context.Context, dir, pkg string) (string, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return "", ErrNoGo
	}
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{.Name}} {{.ImportPath}}", "--", pkg)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build %s: %s", pkg, firstLine(stderr.String(), err))
	}
	name, importPath, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if name != "main" {
		return "", fmt.Errorf("build %s: %s is package %s, not a main package (a command)", pkg, importPath, name)
	}
	return importPath, nil
}

// binary builds pkg in dir for p as a static binary at out. -trimpath,
// no build ID, no version control stamp (a commit elsewhere in the
// repository must not change it) and an environment of its own (the
// user's GOFLAGS, GOAMD64 or GOEXPERIMENT must not either) make it the
// same bytes from the same source with the same Go toolchain.
func binary(ctx context.Context, dir, pkg string, p v1.Platform, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -buildid=", "-o", out, "--", pkg)
	cmd.Dir = dir
	// GOFLAGS is set, not emptied: an empty one would fall back to the
	// user's go env file.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, "GOFLAGS=-buildvcs=false", "GOEXPERIMENT=")
	switch p.Architecture {
	case "amd64":
		cmd.Env = append(cmd.Env, "GOAMD64="+cmp.Or(p.Variant, "v1"))
	case "arm64":
		v := cmp.Or(p.Variant, "v8")
		if !strings.Contains(v, ".") {
			v += ".0"
		}
		cmd.Env = append(cmd.Env, "GOARM64="+v)
	case "arm":
		cmd.Env = append(cmd.Env, "GOARM="+cmp.Or(strings.TrimPrefix(p.Variant, "v"), "7"))
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s for %s: %s", pkg, p, firstLine(stderr.String(), err))
	}
	return nil
}

// commandName is the binary's name: the import path's last element, as
// go build names it (a major version suffix, /v2, skipped).
func commandName(importPath string) string {
	base := path.Base(importPath)
	if len(base) > 1 && base[0] == 'v' && strings.Trim(base[1:], "0123456789") == "" {
		base = path.Base(path.Dir(importPath))
	}
	return base
}

// firstLine is the go command's own words, or err when it said nothing.
func firstLine(stderr string, err error) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	var kept []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			kept = append(kept, l)
		}
		if len(kept) == 3 {
			break
		}
	}
	if len(kept) == 0 {
		return err.Error()
	}
	return strings.Join(kept, "; ")
}

// Folder is the folder package paths are relative to: dir, or a file's
// folder, made absolute.
func Folder(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(abs); err != nil {
		return "", err
	} else if !st.IsDir() {
		abs = filepath.Dir(abs)
	}
	return abs, nil
}
