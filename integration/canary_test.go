//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/integration/lab"
)

// A healthy release under load goes through every step, each step's share
// of requests reaching the canary within 5 points of its weight (the
// Gateway API conformance rule), and is promoted with no failed request.
func TestCanaryHealthyIsPromotedUnderLoad(t *testing.T) {
	c := newCanaryLab(t)
	v2 := c.image("v2")
	load := c.startLoad(40)
	out, err := c.laptop.run(c.canaryArgs(v2)...)
	if err != nil || !strings.Contains(out, "The canary of echo is promoted") {
		t.Fatalf("canary start: %v\n%s", err, out)
	}
	time.Sleep(3 * time.Second) // answers after the route went back to one backend
	answers := load.stop()
	st := c.state()
	if st.Phase != canary.Promoted || len(st.Steps) != 3 {
		t.Fatalf("state %s after %d steps, want Promoted after 3: %+v", st.Phase, len(st.Steps), st.Steps)
	}
	for _, rec := range st.Steps {
		// The gateway takes a route change within a second or so.
		all, toCanary, _ := between(answers, rec.Started.Add(2*time.Second), *rec.Ended)
		share := 100 * float64(toCanary) / float64(max(all, 1))
		t.Logf("step at %d%%: %d of %d requests (%.1f%%) reached the canary", rec.Weight, toCanary, all, share)
		if all < 100 || share < float64(rec.Weight)-5 || share > float64(rec.Weight)+5 {
			t.Errorf("step at %d%%: %.1f%% of %d requests reached the canary, want within 5 points", rec.Weight, share, all)
		}
	}
	all, _, failed := between(answers, time.Time{}, time.Now())
	if failed > 0 {
		t.Errorf("%d of %d requests failed during the canary and its promotion", failed, all)
	}
	c.checkRemoved(v2)
}

// A release that answers 20% 5xx is rolled back by itself within two
// intervals, naming the metric; then stable serves everything. A slow one
// is rolled back on its p99.
func TestCanaryRollsBackOnErrorsAndLatency(t *testing.T) {
	c := newCanaryLab(t)
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"canary", "start", "nope", "-n", c.ns, "--image", "x", "--prometheus", lab.PrometheusURL()}, "service nope not found in namespace " + c.ns},
			{[]string{"canary", "start", "echo", "-n", c.ns, "--image", "x", "--prometheus", "http://127.0.0.1:1"}, "prometheus at http://127.0.0.1:1 does not answer"},
			{[]string{"canary", "start", "echo", "-n", c.ns, "--image", "x", "--prometheus", lab.PrometheusURL(), "--route", "httproute/nope"}, "read httproute " + c.ns + "/nope"},
			{[]string{"canary", "start", "echo", "-n", c.ns, "--image", "x", "--steps", "50,20"}, "the steps must go up"},
			{[]string{"canary", "status", "echo", "-n", c.ns}, "no canary for service echo in namespace " + c.ns},
		} {
			out, err := c.laptop.run(tc.args...)
			if err == nil || !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
				t.Errorf("tunnel %s: want one line saying %q, got %v\n%s", strings.Join(tc.args, " "), tc.want, err, out)
			}
		}
		if _, err := c.tryState(); err == nil {
			t.Error("a refused canary left its record")
		}
		// The dev user's own permissions decide, before anything is made:
		// it may run Deployments in namespace dev, not steer its routes.
		ctx := context.Background()
		deployEchoInDev(t, "canaried")
		out, err := newLaptop(t, "canarydev", "dev").run("canary", "start", "canaried", "-n", "dev", "--image", "x", "--prometheus", lab.PrometheusURL())
		if err == nil || !strings.Contains(out, "you may not list httproutes.gateway.networking.k8s.io in namespace dev") {
			t.Errorf("a canary by the dev user: want a refusal naming the permission, got %v\n%s", err, out)
		}
		if _, err := h.Client.CoreV1().ConfigMaps("dev").Get(ctx, "tunnel-canary-canaried", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the refused canary left its record (%v)", err)
		}
		// An image that cannot start is rolled back before it takes traffic.
		out, err = c.laptop.run(c.canaryArgs(lab.RegistryHost() + "/lab/echo:missing")...)
		if err == nil || !strings.Contains(out, "rolled back: the canary did not start") || !pullFailed(out) {
			t.Errorf("canary of a missing image: %v\n%s", err, out)
		}
		c.checkRemoved(lab.EchoImage)
	})
	for _, tc := range []struct {
		tag, env, metric string
		extra            []string
	}{
		{"fail20", "FAIL_RATE=0.2", "error rate", nil},
		{"slow", "DELAY=300ms", "p99 latency", []string{"--max-p99", "150ms"}},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			img := c.image(tc.tag, tc.env)
			load := c.startLoad(40)
			out, err := c.laptop.run(c.canaryArgs(img, tc.extra...)...)
			if err == nil || !strings.Contains(out, "rolled back: "+tc.metric) {
				t.Fatalf("canary start: want a rollback on %s, got %v\n%s", tc.metric, err, out)
			}
			st := c.state()
			if st.Phase != canary.RolledBack || len(st.Checks) > 2 {
				t.Fatalf("state %s after %d checks, want RolledBack within two intervals: %s", st.Phase, len(st.Checks), st.Reason)
			}
			first := st.Steps[0]
			took := first.Ended.Sub(first.Started)
			t.Logf("rolled back %s after the first step began (interval 8s): %s", took.Round(100*time.Millisecond), st.Reason)
			if took > 2*8*time.Second+5*time.Second {
				t.Errorf("rolled back %s after the first step began, want within two intervals", took)
			}
			time.Sleep(4 * time.Second)
			answers := load.stop()
			all, toCanary, failed := between(answers, first.Ended.Add(3*time.Second), time.Now())
			if all < 20 || toCanary > 0 || failed > 0 {
				t.Errorf("after the rollback: %d requests, %d to the canary, %d failed; want all served by stable", all, toCanary, failed)
			}
			c.checkRemoved(lab.EchoImage)
		})
	}
}

// Another terminal aborts a canary: the driving CLI takes the canary out
// within a second and exits non-zero; traffic is all stable's again.
func TestCanaryAbortFromAnotherTerminal(t *testing.T) {
	c := newCanaryLab(t)
	v4 := c.image("v4")
	driver, driven := c.background(c.canaryArgs(v4, "--interval", "60s")...)
	c.waitFor("the canary takes traffic", 60*time.Second, func(st *canary.State) bool { return st.Phase == canary.Progressing })
	out, err := newLaptop(t, "canary2", "admin").run("canary", "abort", "echo", "-n", c.ns)
	if err != nil || !strings.Contains(out, "The canary of echo is aborted: all traffic goes to echo") {
		t.Errorf("canary abort: %v\n%s", err, out)
	}
	if err := driver.Wait(); err == nil || !strings.Contains(driven.String(), "was aborted: aborted by admin") {
		t.Errorf("the driving CLI: %v\n%s", err, driven.String())
	}
	if st := c.state(); st.Phase != canary.Aborted {
		t.Errorf("after abort: %s", st.Phase)
	}
	c.checkRemoved(lab.EchoImage)
}

// A canary survives its CLI: killed mid-way, nobody drives it and it keeps
// its weight; resume picks it up, and a promote from another terminal is
// carried out by the resuming CLI.
func TestCanaryResumesAfterItsCLIIsKilled(t *testing.T) {
	c := newCanaryLab(t)
	v3 := c.image("v3")
	c.startLoad(40)
	// Driven from the laptop only: nothing in the cluster takes over.
	first, _ := c.background(c.canaryArgs(v3, "--steps", "20,40,60,80,100", "--driver", "laptop")...)
	c.waitFor("the canary reaches its second step", 90*time.Second, func(st *canary.State) bool {
		return st.Phase == canary.Progressing && st.Step >= 1
	})
	_ = first.Process.Kill()
	_ = first.Wait()
	st := c.state()
	out := c.laptop.must("canary", "status", "echo", "-n", c.ns)
	if !strings.Contains(out, "Driven by:  nobody") {
		t.Errorf("status after the CLI was killed does not say nobody drives it:\n%s", out)
	}
	weight := st.Weight()

	resume, resumed := c.background("canary", "resume", "echo", "-n", c.ns)
	c.waitFor("resume drives the canary", 30*time.Second, func(st *canary.State) bool {
		return st.Driver != nil && st.Driver.PID == resume.Process.Pid
	})
	if st := c.state(); st.Weight() < weight {
		t.Errorf("resume went back from %d%% to %d%%", weight, st.Weight())
	}
	// A second terminal promotes it; the resuming CLI carries that out.
	out, err := newLaptop(t, "canary2", "admin").run("canary", "promote", "echo", "-n", c.ns)
	if err != nil || !strings.Contains(out, "promoted by") {
		t.Errorf("canary promote: %v\n%s", err, out)
	}
	if err := resume.Wait(); err != nil || !strings.Contains(resumed.String(), "The canary of echo is promoted") {
		t.Errorf("canary resume: %v\n%s", err, resumed.String())
	}
	if st := c.state(); st.Phase != canary.Promoted {
		t.Errorf("after promote: %s (%s)", st.Phase, st.Reason)
	}
	c.checkRemoved(v3)
}

// The Emissary driver writes the Mappings Emissary expects: the lab has no
// Envoy, so the API server checks them against Emissary's own CRD schema
// (canary/testdata), and with no Envoy metrics the canary is rolled back
// for too few requests, leaving the stable Mapping as it was.
func TestCanaryWritesEmissaryMappings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	crd, err := filepath.Abs("../canary/testdata/emissary-mapping-crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(ctx, node, "apply", "--server-side", "-f", crd); err != nil {
		t.Fatalf("install the Mapping CRD: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectl(context.Background(), node, "delete", "-f", crd, "--wait=false") })
	if out, err := kubectl(ctx, node, "wait", "--for=condition=Established", "--timeout=60s", "crd/mappings.getambassador.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c := &canaryLab{t: t, ns: h.Namespace(t), laptop: newLaptop(t, "canary", "admin")}
	h.DeployEcho(t, c.ns, "echo", 1)
	c.apply(fmt.Sprintf(`apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: echo, namespace: %s}
spec:
  hostname: "*"
  prefix: /echo/
  service: echo.%s:80
  timeout_ms: 3000
`, c.ns, c.ns))
	getMapping := func(name string) (map[string]any, error) {
		out, err := kubectl(ctx, node, "get", "mapping", "-n", c.ns, name, "-o", "json")
		if err != nil {
			return nil, fmt.Errorf("%v: %s", err, out)
		}
		var m map[string]any
		return m, json.Unmarshal([]byte(out), &m)
	}
	before, err := getMapping("echo")
	if err != nil {
		t.Fatal(err)
	}

	cmd, out := c.background("canary", "start", "echo", "-n", c.ns,
		"--image", lab.EchoImage, "--steps", "30", "--interval", "6s", "--max-idle", "1", "--prometheus", lab.PrometheusURL())
	var canaryMapping map[string]any
	eventually(t, 60*time.Second, "the canary Mapping is written", func() (bool, string) {
		canaryMapping, err = getMapping("echo-canary")
		return err == nil, fmt.Sprint(err)
	})
	spec, _ := canaryMapping["spec"].(map[string]any)
	want := map[string]any{"hostname": "*", "prefix": "/echo/", "service": "echo-canary." + c.ns + ":80", "weight": 30.0, "timeout_ms": 3000.0}
	for k, v := range want {
		if spec[k] != v {
			t.Errorf("canary mapping spec.%s = %v, want %v (spec %v)", k, spec[k], v, spec)
		}
	}
	err = cmd.Wait()
	if err == nil || !strings.Contains(out.String(), "rolled back: too few requests to judge") {
		t.Errorf("canary start: want a rollback for too few requests, got %v\n%s", err, out.String())
	}
	if _, err := getMapping("echo-canary"); err == nil {
		t.Error("the canary Mapping is still there after the rollback")
	}
	after, err := getMapping("echo")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"spec", "metadata.generation"} {
		b, a := pick(before, k), pick(after, k)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("the stable Mapping's %s changed: %v, was %v", k, a, b)
		}
	}
}
