//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
	"tunnel.dev/tunnel/release"
)

// release is tunnel at one version: its CLI, and its agent image pushed to
// the lab's registry.
type tunnelRelease struct {
	version string
	cli     string
	agent   lab.Agent
}

// releases builds this tree as each version, as make build image
// REGISTRY=... VERSION=... would.
func releases(t *testing.T, versions ...string) map[string]tunnelRelease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := map[string]tunnelRelease{}
	for _, v := range versions {
		cli := filepath.Join(t.TempDir(), "tunnel-"+v)
		if err := lab.BuildTunnel(ctx, release.Stamp{Version: v, Registry: lab.AgentRegistry()}, cli); err != nil {
			t.Fatal(err)
		}
		agent, err := lab.PushAgentTo(ctx, h.Paths, lab.AgentRegistry(), v)
		if err != nil {
			t.Fatal(err)
		}
		out[v] = tunnelRelease{version: v, cli: cli, agent: agent}
	}
	return out
}

// curlLoop requests url from a laptop every 50 ms until stop is called,
// which returns the longest time between two answered requests.
func curlLoop(l *laptop, url string) (stop func() (longest time.Duration, answered, failed int)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var longest time.Duration
	var ok, bad int
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := time.Now()
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			out, err := h.Run(rctx, l.opt, "curl", "-sf", "--max-time", "2", url)
			rcancel()
			if ctx.Err() != nil {
				return
			}
			if err == nil && strings.Contains(out, "pod=") {
				ok++
				longest = max(longest, time.Since(last))
				last = time.Now()
			} else {
				bad++
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() (time.Duration, int, int) {
		cancel()
		wg.Wait()
		return longest, ok, bad
	}
}

// versionsOf runs `tunnel version -o json` with bin in a laptop.
func versionsOf(t *testing.T, l *laptop) (manager, digest string) {
	t.Helper()
	out := l.must("version", "-o", "json")
	var v struct {
		Manager string
		Agent   struct{ Image, Digest string }
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("tunnel version -o json: %v\n%s", err, out)
	}
	return v.Manager, v.Agent.Digest
}

// Versions that differ: a manager serves CLIs of its minor version and the
// one before, and tells any other which side to upgrade; install --upgrade
// moves it while a laptop stays connected and keeps its settings; older
// sidecars keep working until --agents moves them.
func TestVersionSkewAndUpgrade(t *testing.T) {
	// Versions of this tree's own: a tag pushed again with other content
	// would be the node's cached image, not this one (tags do not move).
	tree := "lab-" + strings.ReplaceAll(h.Agent.Stamp.Version, ".", "-") // one semver identifier
	v := func(minor int) string { return fmt.Sprintf("v0.%d.0-%s", minor, tree) }
	v89, v90, v91, v92 := v(89), v(90), v(91), v(92)
	r := releases(t, v89, v90, v91, v92)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// Settings an upgrade must keep: a pull secret and a user allowed in.
	withoutManager(t, true)
	pullSecret(t, "tunnel-system", "lab-pull")
	if out, err := h.Run(ctx, node, r[v91].cli, "install", "--image-pull-secret", "lab-pull", "--allow-user", "dev"); err != nil {
		t.Fatalf("install %s: %v\n%s", v91, err, out)
	}

	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	pullSecret(t, ns, "lab-pull") // for the sidecars
	l := newLaptop(t, "vera", "admin")
	before := l.resolvConf()
	for _, c := range []struct{ cli, want string }{
		{v89, fmt.Sprintf("this tunnel (%s) is older than the tunnel manager in the cluster (%s), which serves v0.91 and the minor version before: install tunnel %s", v89, v91, v91)},
		{v92, fmt.Sprintf("the tunnel manager in the cluster (%s) is older than this tunnel (%s): run `tunnel install --upgrade` to move it to %s", v91, v92, v92)},
	} {
		l.bin = r[c.cli].cli
		out, err := l.run("connect", "-n", ns)
		if err == nil || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("connect with %s to a %s manager: %v\n%s", c.cli, v91, err, out)
		}
		l.run("quit")
		if l.resolvConf() != before {
			t.Errorf("the refused connect with %s left resolv.conf changed", c.cli)
		}
	}
	l.bin = r[v90].cli // one minor behind: served
	l.must("connect", "-n", ns)
	l.must("quit")

	// A laptop of v0.91.0 with an intercept and a curl loop by name; the
	// admin upgrades the manager to v0.92.0 from the node.
	l.bin = r[v91].cli
	l.must("connect", "-n", ns)
	startLocalServer(t, l, "laptop-vera", 7072)
	l.must("intercept", "echo", "--port", "7072:http")
	ip := serviceIP(t, ns, "echo")
	stop := curlLoop(l, fmt.Sprintf("http://echo.%s/loop", ns))
	time.Sleep(2 * time.Second)
	if out, err := h.Run(ctx, node, r[v92].cli, "install", "--upgrade"); err != nil {
		stop()
		t.Fatalf("install --upgrade: %v\n%s", err, out)
	}
	time.Sleep(8 * time.Second)
	gap, answered, failed := stop()
	t.Logf("install --upgrade with a laptop connected: the curl loop's longest gap %s (target 5 s), %d answered, %d failed", gap.Round(10*time.Millisecond), answered, failed)
	if gap > 15*time.Second || answered == 0 {
		t.Errorf("the laptop's requests stopped for %s across the upgrade", gap)
	}
	if m, d := versionsOf(t, l); m != v92 || d != r[v92].agent.Digest {
		t.Errorf("after the upgrade tunnel version says manager %s, digest %s; want %s, %s", m, d, v92, r[v92].agent.Digest)
	}
	d, err := h.Client.AppsV1().Deployments("tunnel-system").Get(ctx, "tunnel-manager", metav1.GetOptions{})
	if err != nil || len(d.Spec.Template.Spec.ImagePullSecrets) != 1 || d.Spec.Template.Spec.ImagePullSecrets[0].Name != "lab-pull" {
		t.Errorf("the upgrade lost the pull secret: %v", err)
	}
	rb, err := h.Client.RbacV1().RoleBindings("tunnel-system").Get(ctx, "tunnel-client", metav1.GetOptions{})
	if err != nil || !slices.ContainsFunc(rb.Subjects, func(s rbacv1.Subject) bool { return s.Name == "dev" }) {
		t.Errorf("the upgrade lost who may connect: %v", err)
	}
	// The v0.91.0 sidecar still carries the intercept to the laptop.
	eventually(t, 30*time.Second, "the old sidecar's intercept answers after the upgrade", func() (bool, string) {
		out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "5", "http://"+ip+"/after-upgrade")
		return err == nil && strings.Contains(out, "pod=laptop-vera"), out
	})
	images, _ := imageIDs(t, ns, "app=echo", "tunnel-agent")
	if want := lab.AgentRegistry() + "/tunnel-agent@" + r[v91].agent.Digest; len(images) != 1 || images[0] != want {
		t.Errorf("before --agents the sidecar runs %v, want %s", images, want)
	}
	if out, err := h.Run(ctx, node, r[v92].cli, "install", "--upgrade", "--agents"); err != nil {
		t.Fatalf("install --upgrade --agents: %v\n%s", err, out)
	}
	images, _ = imageIDs(t, ns, "app=echo", "tunnel-agent")
	if want := lab.AgentRegistry() + "/tunnel-agent@" + r[v92].agent.Digest; len(images) != 1 || images[0] != want {
		t.Errorf("after --agents the sidecar runs %v, want %s", images, want)
	}
	eventually(t, 30*time.Second, "the moved sidecar's intercept answers", func() (bool, string) {
		out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "5", "http://"+ip+"/after-agents")
		return err == nil && strings.Contains(out, "pod=laptop-vera"), out
	})
	// A downgrade is refused.
	if out, err := h.Run(ctx, node, r[v91].cli, "install", "--upgrade"); err == nil || !strings.Contains(out, "is newer than this tunnel") {
		t.Errorf("install --upgrade with an older tunnel: %v\n%s", err, out)
	}
	l.must("leave", "echo-http")
	l.must("quit")
}
