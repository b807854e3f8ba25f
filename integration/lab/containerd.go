//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// removePods stops and removes every pod sandbox through the CRI, which
// tears down each pod's network (its veth, IP lease and network namespace
// mount) the way the kubelet would. Run it after the kubelet stopped, or it
// would start them again.
func removePods(ctx context.Context, p Paths) error {
	if _, err := os.Stat(p.containerdSocket()); err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+p.containerdSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s/%s: %w", sb.Metadata.GetNamespace(), sb.Metadata.GetName(), err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s/%s: %w", sb.Metadata.GetNamespace(), sb.Metadata.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// killContainers is the fallback when containerd is gone: runc's own state
// folder (the lab's, set in containerd.toml) lists every container left.
func killContainers(ctx context.Context, p Paths) {
	root := p.state("containerd", "runc", "k8s.io")
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		_, _ = run(ctx, "runc", "--root", root, "kill", e.Name(), "KILL")
		_, _ = run(ctx, "runc", "--root", root, "delete", "--force", e.Name())
	}
}

// killShims ends containerd shims that still serve the lab's containerd;
// they outlive containerd by design.
func killShims(p Paths) {
	sock := p.containerdSocket()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && strings.Contains(string(cmdline), sock) {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err == nil {
				_ = terminate(pid, func() bool { return processRuns(pid, args[0]) }, 2*time.Second)
			}
		}
	}
}

// importImage imports an image tarball into the lab's containerd: the
// sandbox image only; every other image is pulled from the registry.
func importImage(ctx context.Context, p Paths, tarball string) error {
	if _, err := os.Stat(tarball); err != nil {
		return fmt.Errorf("image tarball: %w", err)
	}
	if _, err := os.Stat(p.containerdSocket()); err != nil {
		return errNotUp
	}
	cmd := exec.CommandContext(ctx, "ctr", "--address", p.containerdSocket(), "-n", "k8s.io",
		"images", "import", "--no-unpack=false", tarball)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("import %s into containerd: %w: %s", tarball, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// criReady is containerd's readiness as the kubelet sees it: its CRI
// answers Status. (containerd serves `ctr` before its CRI has loaded its
// containers; a kubelet started then exits with "server is not
// initialized yet", which a restart on a node full of pods shows.)
func criReady(p Paths) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := grpc.NewClient("unix://"+p.containerdSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = cri.NewRuntimeServiceClient(conn).Status(ctx, &cri.StatusRequest{})
		return err
	}
}
