//go:build e2e

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/integration/lab"
)

// canaryLab is one namespace with the test app behind an HTTPRoute of the
// lab's gateway, a load generator sending through the gateway, and a
// developer's laptop to run tunnel canary from.
type canaryLab struct {
	t      *testing.T
	ns     string
	host   string
	gw     string
	laptop *laptop
}

func newCanaryLab(t *testing.T) *canaryLab {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute) // a cold Traefik build
	defer cancel()
	if err := lab.EnsureGateway(ctx, h.Lab, h.Client); err != nil {
		t.Fatal(err)
	}
	c := &canaryLab{t: t, ns: h.Namespace(t), laptop: newLaptop(t, "canary", "admin")}
	c.host = c.ns + ".lab.test"
	h.DeployEcho(t, c.ns, "echo", 2)
	c.apply(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: %s}
spec:
  parentRefs: [{name: %s, namespace: %s}]
  hostnames: [%s]
  rules:
  - backendRefs: [{name: echo, port: 80}]
`, c.ns, lab.GatewayName, lab.GatewayNamespace, c.host))
	c.gw = serviceIP(t, lab.GatewayNamespace, "traefik")
	eventually(t, 30*time.Second, "the gateway routes to the app", func() (bool, string) {
		out, err := h.Run(ctx, node, "curl", "-sS", "--max-time", "2", "-H", "Host: "+c.host, "http://"+c.gw+"/")
		return err == nil && strings.Contains(out, "pod=echo-"), out
	})
	return c
}

func (c *canaryLab) apply(manifest string) {
	c.t.Helper()
	file := filepath.Join(c.t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(file, []byte(manifest), 0o644); err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := kubectl(ctx, node, "apply", "--server-side", "-f", file); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// image pushes the test app as a new release that behaves as env says.
func (c *canaryLab) image(tag string, env ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref, err := lab.EchoVariant(ctx, h.Lab.Paths, tag, env...)
	if err != nil {
		c.t.Fatal(err)
	}
	return ref
}

// canaryArgs are a canary's flags for a lab run: short steps, and enough
// requests at 40 a second for every step.
func (c *canaryLab) canaryArgs(image string, extra ...string) []string {
	return append([]string{"canary", "start", "echo", "-n", c.ns, "--image", image,
		"--steps", "20,50,100", "--interval", "8s", "--min-requests", "10",
		"--prometheus", lab.PrometheusURL()}, extra...)
}

func (c *canaryLab) state() *canary.State {
	c.t.Helper()
	st, err := c.tryState()
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

func (c *canaryLab) tryState() (*canary.State, error) {
	out, err := c.laptop.run("canary", "status", "echo", "-n", c.ns, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("canary status: %v: %s", err, out)
	}
	var st canary.State
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("canary status -o json: %v\n%s", err, out)
	}
	return &st, nil
}

// background starts tunnel in the laptop and returns it with its output.
func (c *canaryLab) background(args ...string) (*exec.Cmd, *strings.Builder) {
	c.t.Helper()
	cmd, err := lab.Command(context.Background(), h.Lab.Paths, c.laptop.opt, append([]string{c.laptop.bin}, args...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	var out strings.Builder // one writer for both: exec writes it from one goroutine at a time
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, &out
}

// waitFor polls the canary's record until cond holds.
func (c *canaryLab) waitFor(what string, timeout time.Duration, cond func(*canary.State) bool) {
	c.t.Helper()
	eventually(c.t, timeout, what, func() (bool, string) {
		st, err := c.tryState()
		if err != nil {
			return false, err.Error()
		}
		return cond(st), fmt.Sprintf("%s at step %d, driven by %v", st.Phase, st.Step, st.Driver)
	})
}

// loadGen sends requests through the gateway from the node (a client in
// the cluster's network) and keeps every answer.
type loadGen struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out strings.Builder
}

type answer struct {
	at   time.Time
	code int
	pod  string
}

// startLoad sends rate requests a second, each with headers ("Name: value").
func (c *canaryLab) startLoad(rate int, headers ...string) *loadGen {
	c.t.Helper()
	cmd, err := lab.Command(context.Background(), h.Lab.Paths, node,
		append([]string{h.EchoClient(), "load", "http://" + c.gw + "/", strconv.Itoa(rate), c.host}, headers...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	g := &loadGen{cmd: cmd}
	cmd.Stdout = &lockedWriter{mu: &g.mu, w: &g.out}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { g.stop() })
	return g
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// stop ends the load and returns its answers.
func (g *loadGen) stop() []answer {
	if g.cmd.ProcessState == nil {
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		_ = g.cmd.Wait()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []answer
	sc := bufio.NewScanner(strings.NewReader(g.out.String()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		ms, _ := strconv.ParseInt(f[0], 10, 64)
		code, _ := strconv.Atoi(f[1])
		out = append(out, answer{at: time.UnixMilli(ms), code: code, pod: f[2]})
	}
	return out
}

// between counts the answers in [from, to): all, from canary pods, and failed.
func between(answers []answer, from, to time.Time) (all, canary, failed int) {
	for _, a := range answers {
		if a.at.Before(from) || !a.at.Before(to) {
			continue
		}
		all++
		if strings.HasPrefix(a.pod, "echo-canary-") {
			canary++
		}
		if a.code != 200 {
			failed++
		}
	}
	return
}

// checkRemoved asserts that the canary left nothing: its Deployment,
// Service and backend are gone and the route is as it was.
func (c *canaryLab) checkRemoved(wantImage string) {
	c.t.Helper()
	ctx := context.Background()
	if _, err := h.Client.AppsV1().Deployments(c.ns).Get(ctx, "echo-canary", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		c.t.Errorf("the canary deployment is still there (%v)", err)
	}
	if _, err := h.Client.CoreV1().Services(c.ns).Get(ctx, "echo-canary", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		c.t.Errorf("the canary service is still there (%v)", err)
	}
	out, err := kubectl(ctx, node, "get", "httproute", "-n", c.ns, "echo", "-o", "jsonpath={.spec.rules[*].backendRefs}{\"|\"}{.metadata.annotations}")
	if err != nil || strings.Contains(out, "canary") || !strings.Contains(out, `"name":"echo"`) {
		c.t.Errorf("the route still names the canary: %v %s", err, out)
	}
	// The standby goes with the canary: deleted by the driver that ended
	// it, or done when it ended it itself.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		j, err := h.Client.BatchV1().Jobs(c.ns).Get(ctx, "tunnel-canary-echo", metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && (j.DeletionTimestamp != nil || j.Status.Succeeded > 0)) {
			break
		}
		if time.Now().After(deadline) {
			c.t.Errorf("the canary's standby job still runs 30s after the canary ended (%v)", err)
			break
		}
	}
	d, err := h.Client.AppsV1().Deployments(c.ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil || d.Spec.Template.Spec.Containers[0].Image != wantImage {
		c.t.Errorf("the stable deployment runs %v, want %s (%v)", d.Spec.Template.Spec.Containers[0].Image, wantImage, err)
	}
}

// pick reads a dotted path of nested maps.
func pick(m map[string]any, path string) any {
	var v any = m
	for _, k := range strings.Split(path, ".") {
		mm, _ := v.(map[string]any)
		v = mm[k]
	}
	return v
}
