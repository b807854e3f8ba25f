//go:build e2e

// Package lifecycle tests the lab's own life: down leaves the machine as it
// was, and up works again, with non-default CIDRs and cluster domain too.
// It takes the lab down, so it runs in its own package, after the others.
package lifecycle

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/integration/lab"
)

func TestDownUpWithOtherValuesDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end tests need root: run them with sudo")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	l := lab.New(lab.DefaultPaths(), os.Stderr)
	// Whatever happens, leave a default lab up for the next run.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if _, err := l.Down(ctx); err != nil {
			t.Errorf("down before restoring the default lab: %v", err)
		}
		if err := l.Up(ctx, lab.Config{}); err != nil {
			t.Errorf("bring the default lab back up: %v", err)
		}
	})

	left, err := l.Down(ctx)
	if err != nil {
		t.Fatalf("down: %v", err)
	}
	if len(left) > 0 {
		t.Fatalf("down left the machine different from before up:\n%s", strings.Join(left, "\n"))
	}
	assertNothingLeft(t, l)

	cfg := lab.Config{PodCIDR: "10.112.0.0/16", ServiceCIDR: "10.113.0.0/20", ClusterDomain: "tunnel.test"}
	// Up itself waits for a pod to resolve kubernetes.default.svc.tunnel.test.
	if err := l.Up(ctx, cfg); err != nil {
		t.Fatalf("up with %+v: %v", cfg, err)
	}
	checkOtherValues(ctx, t, l, cfg)

	left, err = l.Down(ctx)
	if err != nil {
		t.Fatalf("down: %v", err)
	}
	if len(left) > 0 {
		t.Fatalf("down left the machine different from before up:\n%s", strings.Join(left, "\n"))
	}
	assertNothingLeft(t, l)
}

// checkOtherValues shows the cluster really uses the non-default values:
// Services get addresses from the service CIDR, pods from the pod CIDR, and
// the test app answers through its ClusterIP.
func checkOtherValues(ctx context.Context, t *testing.T, l *lab.Lab, cfg lab.Config) {
	h, err := lab.Attach(ctx, l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs := h.Client
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix(cfg.ServiceCIDR).Contains(netip.MustParseAddr(svc.Spec.ClusterIP)) {
		t.Errorf("service IP %s is outside %s", svc.Spec.ClusterIP, cfg.ServiceCIDR)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("list pods: %v", err)
	}
	if ip := pods.Items[0].Status.PodIP; !netip.MustParsePrefix(cfg.PodCIDR).Contains(netip.MustParseAddr(ip)) {
		t.Errorf("pod IP %s is outside %s", ip, cfg.PodCIDR)
	}
	out, err := h.Run(ctx, lab.ExecOptions{}, "curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s/", svc.Spec.ClusterIP))
	if err != nil || !strings.Contains(out, "pod=echo-") {
		t.Fatalf("curl the ClusterIP from the node: %v\n%s", err, out)
	}
	name := "echo." + ns + ".svc." + cfg.ClusterDomain
	out, err = h.Run(ctx, lab.ExecOptions{}, "kubectl", "exec", "-n", ns, "deploy/echo", "--", "/echo", "lookup", name)
	if err != nil || strings.TrimSpace(out) != svc.Spec.ClusterIP {
		t.Fatalf("lookup %s in a pod: %v\n%s", name, err, out)
	}

	// tunnel connect works the same on this cluster: the subnets and the
	// domain come from the cluster, not from defaults.
	laptop := lab.ExecOptions{Laptop: "olga"}
	tunnel := h.Tunnel(t)
	defer h.Run(context.WithoutCancel(ctx), laptop, tunnel, "quit")
	if out, err := h.Run(ctx, laptop, tunnel, "connect", "-n", ns); err != nil {
		t.Fatalf("tunnel connect: %v\n%s", err, out)
	}
	for _, script := range []string{
		"curl -sS --max-time 10 http://echo/short",
		"curl -sS --max-time 10 http://" + name + "/full",
		fmt.Sprintf("curl -sS --max-time 10 http://%s:%d/pod", pods.Items[0].Status.PodIP, lab.EchoHTTPPort),
	} {
		if out, err := h.Run(ctx, laptop, "sh", "-c", script); err != nil || !strings.Contains(out, "pod=echo-") {
			t.Errorf("%s through the tunnel: %v\n%s", script, err, out)
		}
	}
	out, err = h.Run(ctx, laptop, tunnel, "status")
	if err != nil || !strings.Contains(out, cfg.ServiceCIDR) || !strings.Contains(out, "search "+ns+".svc."+cfg.ClusterDomain) {
		t.Errorf("tunnel status does not show the cluster's own subnets and domain: %v\n%s", err, out)
	}
}

// assertNothingLeft checks the lab's own marks directly, beside the
// before/after comparison: no process, namespace, interface or route.
func assertNothingLeft(t *testing.T, l *lab.Lab) {
	t.Helper()
	run := func(args ...string) string {
		out, err := lab.RunCommand(context.Background(), args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	if out := run("ip", "netns", "list"); strings.Contains(out, "tlab-") {
		t.Errorf("network namespaces left: %s", out)
	}
	if out := run("ip", "-o", "link", "show"); strings.Contains(out, "tlab-") {
		t.Errorf("interfaces left: %s", out)
	}
	if out := run("ip", "route", "show", "table", "all", "proto", "211"); out != "" {
		t.Errorf("routes left: %s", out)
	}
	if out := run("ip", "route", "show", "table", "all"); strings.Contains(out, "10.209.") || strings.Contains(out, "10.112.") {
		t.Errorf("lab routes left: %s", out)
	}
	if procs := lab.Processes(l.Paths); len(procs) > 0 {
		t.Errorf("processes left: %s", strings.Join(procs, "; "))
	}
	if _, err := os.Stat(l.Paths.State); !os.IsNotExist(err) {
		t.Errorf("state folder %s left: %v", l.Paths.State, err)
	}
	if st := l.Status(); st.Up || len(st.Components) > 0 {
		t.Errorf("status after down: %+v", st)
	}
}
