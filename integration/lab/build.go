//go:build linux

package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/mod/modfile"

	"tunnel.dev/tunnel/release"
)

// The Kubernetes binaries the lab runs, all built from k8s.io/kubernetes.
var kubernetesCommands = []string{
	"kube-apiserver", "kube-controller-manager", "kube-scheduler",
	"kubelet", "kube-proxy", "kubectl",
}

// builder compiles the cluster's parts from the Go module proxy into the
// cache, once per version: a folder appears only when its build finished.
type builder struct {
	paths    Paths
	progress *progress
}

// ensureAll builds whatever the cache lacks.
func (b *builder) ensureAll(ctx context.Context) error {
	for _, part := range []struct {
		what  string
		dir   string
		files []string
		build func(context.Context, string) error
	}{
		// About 10 to 15 min on 2 cores with a cold Go cache.
		{"Kubernetes " + KubernetesVersion, b.paths.KubernetesBin(), kubernetesCommands, b.buildKubernetes},
		{"etcd " + EtcdVersion, b.versionDir("etcd", EtcdVersion), []string{"etcd"}, b.buildEtcd},
		{"CoreDNS " + CoreDNSVersion, b.versionDir("coredns", CoreDNSVersion), []string{"coredns"}, b.buildCoreDNS},
	} {
		if haveAll(part.dir, part.files) {
			continue
		}
		done := b.progress.long(ctx, "build "+part.what+" from the Go module proxy")
		err := part.build(ctx, part.dir)
		done(err)
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) versionDir(name, version string) string {
	return filepath.Join(b.paths.Cache, name+"-"+version)
}

// buildKubernetes builds the six commands from k8s.io/kubernetes. Its go.mod
// replaces the staging modules with ./staging, so `go install` refuses it; a
// small module of our own requires it and points every staging module at
// its published v0.x twin instead.
func (b *builder) buildKubernetes(ctx context.Context, bin string) error {
	src := filepath.Join(b.paths.Cache, "src", "kubernetes-"+KubernetesVersion)
	gomod, err := kubernetesBuildModule(ctx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(src, "go.mod"), gomod, 0o644); err != nil {
		return fmt.Errorf("write Kubernetes build module: %w", err)
	}
	minor := strings.Split(strings.TrimPrefix(KubernetesVersion, "v"), ".")[1]
	ldflags := fmt.Sprintf("-s -w -X k8s.io/component-base/version.gitVersion=%s "+
		"-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=%s "+
		"-X k8s.io/component-base/version.gitTreeState=clean", KubernetesVersion, minor)
	args := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", bin + ".tmp/"}
	for _, c := range kubernetesCommands {
		args = append(args, "k8s.io/kubernetes/cmd/"+c)
	}
	return b.goBuild(ctx, src, bin, args, nil)
}

// kubernetesBuildModule writes the go.mod of the build module from the
// staging replaces that k8s.io/kubernetes's own go.mod lists.
func kubernetesBuildModule(ctx context.Context) ([]byte, error) {
	dir, err := moduleDir(ctx, "k8s.io/kubernetes@"+KubernetesVersion)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return nil, fmt.Errorf("read Kubernetes go.mod: %w", err)
	}
	return buildModuleFor(data)
}

// buildModuleFor derives the build module's go.mod from Kubernetes' own.
func buildModuleFor(data []byte) ([]byte, error) {
	upstream, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		return nil, fmt.Errorf("parse Kubernetes go.mod: %w", err)
	}
	staging := "v0." + strings.TrimPrefix(KubernetesVersion, "v1.")
	f := &modfile.File{}
	if err := f.AddModuleStmt("tunnel.dev/lab/kubernetes-build"); err != nil {
		return nil, err
	}
	if err := f.AddGoStmt(upstream.Go.Version); err != nil {
		return nil, err
	}
	if err := f.AddRequire("k8s.io/kubernetes", KubernetesVersion); err != nil {
		return nil, err
	}
	n := 0
	for _, r := range upstream.Replace {
		if strings.HasPrefix(r.New.Path, "./staging/") {
			if err := f.AddReplace(r.Old.Path, "", r.Old.Path, staging); err != nil {
				return nil, err
			}
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("k8s.io/kubernetes %s lists no staging modules: its layout changed", KubernetesVersion)
	}
	f.Cleanup()
	return f.Format()
}

// moduleDir downloads a module and returns where the go command unpacked it.
func moduleDir(ctx context.Context, mod string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = os.TempDir() // outside any module, so our go.mod plays no part
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	_ = json.Unmarshal(out, &info)
	if err != nil || info.Dir == "" {
		return "", fmt.Errorf("download %s from the Go module proxy: %s %v", mod, info.Error, err)
	}
	return info.Dir, nil
}

// buildEtcd builds etcd from a one-line main that calls etcdmain.Main. The
// etcd module's own main has replace directives, and Debian's etcd 3.4 breaks
// watches of a current API server.
func (b *builder) buildEtcd(ctx context.Context, dir string) error {
	src := filepath.Join(b.paths.Cache, "src", "etcd-"+EtcdVersion)
	gomod := fmt.Sprintf("module tunnel.dev/lab/etcd-build\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n", EtcdVersion)
	main := "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n"
	if err := writeFileAtomic(filepath.Join(src, "go.mod"), []byte(gomod), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(src, "main.go"), []byte(main), 0o644); err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", dir + ".tmp/etcd", "."}
	return b.goBuild(ctx, src, dir, args, nil)
}

// buildCoreDNS builds CoreDNS statically: it runs in the cluster from an
// image with nothing else in it, and on the node as the laptops' upstream.
func (b *builder) buildCoreDNS(ctx context.Context, dir string) error {
	src := filepath.Join(b.paths.Cache, "src", "coredns-"+CoreDNSVersion)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	// `go install mod@version` builds outside any module, as CoreDNS wants.
	args := []string{"install", "-trimpath", "-ldflags", "-s -w", "github.com/coredns/coredns@" + CoreDNSVersion}
	return b.goBuild(ctx, src, dir, args, []string{"GOBIN=" + dir + ".tmp", "CGO_ENABLED=0"})
}

// goBuild runs the go command in src writing into out+".tmp", then renames
// that to out, so a folder in the cache is always a finished build.
func (b *builder) goBuild(ctx context.Context, src, out string, args, env []string) error {
	tmp := out + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s in %s: %w\n%s", args[0], src, err, tail(stderr.String(), 40))
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func haveAll(dir string, files []string) bool {
	for _, f := range files {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// BuildBinary builds a package of this repository as a static binary, as an
// image or the host needs it: release.Binary, unstamped, for this machine.
func BuildBinary(ctx context.Context, pkg, out string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	return release.Binary(ctx, root, pkg, "linux", runtime.GOARCH, out, release.Stamp{})
}

// moduleRoot is the folder of this repository's go.mod, wherever the caller runs.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("find this repository's go.mod: run from inside the repository")
	}
	return filepath.Dir(gomod), nil
}
