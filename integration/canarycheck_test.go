//go:build e2e

package integration

import (
	"context"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/integration/lab"
)

// conversionCheck judges the canary by the app's own counter, scraped
// from its pods: its share of good orders is at least 90% of stable's.
const conversionCheck = `conversion: sum(rate(orders_total{result="ok",{{canary_pods}}}[{{interval}}])) / sum(rate(orders_total{{canary_pods}}[{{interval}}]))` +
	` >= 0.9 * sum(rate(orders_total{result="ok",{{stable_pods}}}[{{interval}}])) / sum(rate(orders_total{{stable_pods}}[{{interval}}]))`

// A release that answers every request with a 200 but fails half its
// orders passes the gateway's error rate and p99, and is rolled back on
// the business check alone, with a sentence naming it and its value. A
// check that does not parse is refused before anything is made.
func TestCanaryRollsBackOnABusinessMetric(t *testing.T) {
	c := newCanaryLab(t)
	args := c.canaryArgs(lab.EchoImage, "--check", `conversion: sum(rate(orders_total[1m]) >= 0.9`)
	out, err := c.laptop.run(args...)
	if err == nil || !strings.Contains(out, "--check conversion: the query does not parse") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("a check that does not parse: want one line saying so, got %v\n%s", err, out)
	}
	if _, err := c.tryState(); err == nil {
		t.Error("a refused check left the canary's record")
	}
	if _, err := h.Client.AppsV1().Deployments(c.ns).Get(context.Background(), "echo-canary", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a refused check made the canary's deployment (%v)", err)
	}

	bad := c.image("orders-bad", "ORDER_FAIL_RATE=0.5")
	load := c.startLoad(40)
	out, err = c.laptop.run(c.canaryArgs(bad, "--check", conversionCheck)...)
	reason := regexp.MustCompile(`rolled back: check conversion: (0\.[0-9]+|0) is not >= 0\.9[0-9]* over 8s`)
	if err == nil || !reason.MatchString(out) {
		t.Fatalf("canary start: want a rollback on the conversion check, got %v\n%s", err, out)
	}
	st := c.state()
	last := st.Checks[len(st.Checks)-1]
	t.Logf("rolled back: %s (canary %s; stable %s; %v)", st.Reason, last.Canary, last.Stable, last.Custom)
	if last.Canary.ErrorRate != 0 || len(last.Custom) != 1 || last.Custom[0].Passed {
		t.Errorf("the last check: canary %s, custom %+v; want no errors and a failed conversion", last.Canary, last.Custom)
	}
	if st.Phase != canary.RolledBack {
		t.Errorf("state %s, want RolledBack", st.Phase)
	}
	all, toCanary, failed := between(load.stop(), last.At.Add(5*time.Second), time.Now())
	if toCanary > 0 || failed > 0 {
		t.Errorf("after the rollback: %d of %d requests reached the canary, %d failed", toCanary, all, failed)
	}
	c.checkRemoved(lab.EchoImage)
	// Share, error rate, p99 and the check, each drawn.
	c.lookAtReport(4)
}

// lookAtReport writes the canary's report page from the laptop, opens it
// in headless Chromium and checks that its charts drew: the canary's and
// the stable's colours cover a share of the screenshot.
func (c *canaryLab) lookAtReport(wantCharts int) {
	c.t.Helper()
	dir := c.t.TempDir()
	file := filepath.Join(dir, "report.html")
	out, err := c.laptop.run("canary", "report", "echo", "-n", c.ns, "-o", file)
	if err != nil || lastLine(out) != file {
		c.t.Fatalf("canary report: %v\n%s", err, out)
	}
	if strings.Contains(out, "Not drawn") {
		c.t.Errorf("the report left charts out:\n%s", out)
	}
	page, err := os.ReadFile(file)
	if err != nil {
		c.t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n != wantCharts {
		c.t.Errorf("the report has %d charts, want %d", n, wantCharts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shot := filepath.Join(dir, "report.png")
	// No network for the browser: the page must need none.
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", "chromium", "--headless", "--no-sandbox", "--disable-gpu",
		"--hide-scrollbars", "--window-size=1100,3000", "--screenshot="+shot, "file://"+file)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		c.t.Fatal(err)
	}
	near := func(col color.Color, r, g, b uint32) bool {
		cr, cg, cb, _ := col.RGBA() // 16 bits a channel
		d := func(x, want uint32) uint32 { x >>= 8; return max(x, want) - min(x, want) }
		return d(cr, r) < 40 && d(cg, g) < 40 && d(cb, b) < 40
	}
	var canaryPx, stablePx int
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			switch px := img.At(x, y); {
			case near(px, 0xd6, 0x27, 0x28):
				canaryPx++
			case near(px, 0x1f, 0x77, 0xb4):
				stablePx++
			}
		}
	}
	c.t.Logf("report screenshot: %d canary pixels, %d stable pixels", canaryPx, stablePx)
	if canaryPx < 500 || stablePx < 300 {
		c.t.Errorf("the report's charts did not draw: %d canary and %d stable pixels in %s", canaryPx, stablePx, shot)
	}
}
