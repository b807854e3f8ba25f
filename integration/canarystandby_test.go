//go:build e2e

package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/canary"
	"tunnel.dev/tunnel/integration/lab"
)

// Nobody has to keep a laptop open: the CLI that drives a canary is killed
// with SIGKILL at a step, and the standby in the cluster takes the canary
// over within its step's interval and finishes it by the same rules: a bad
// version rolled back, a good one promoted, even when the pod driving it
// is killed too.
func TestCanaryFinishedByTheClusterAfterItsLaptopDies(t *testing.T) {
	const interval = 12 * time.Second
	// killAtAStep starts a canary, kills its CLI once it takes traffic,
	// and returns the record once the cluster drives it.
	killAtAStep := func(c *canaryLab, image string, extra ...string) *canary.State {
		t := c.t
		args := append([]string{"--steps", "20,50,100", "--interval", interval.String(), "--driver", "cluster"}, extra...)
		cli, out := c.background(c.canaryArgs(image, args...)...)
		c.waitFor("the canary takes traffic", 90*time.Second, func(st *canary.State) bool { return st.Phase == canary.Progressing })
		_ = cli.Process.Signal(syscall.SIGKILL)
		_ = cli.Wait()
		killed := time.Now()
		if !strings.Contains(out.String(), "Starting the canary's driver in the cluster (job tunnel-canary-echo)") {
			t.Errorf("the CLI did not start the standby:\n%s", out.String())
		}
		var st *canary.State
		c.waitFor("the cluster takes the canary over", 3*interval, func(s *canary.State) bool {
			st = s
			return s.Phase.Done() || (s.Driver != nil && s.Driver.Cluster)
		})
		took := time.Since(killed)
		t.Logf("the cluster took the canary over %s after its CLI was killed (interval %s), at step %d", took.Round(100*time.Millisecond), interval, st.Step+1)
		if took > interval {
			t.Errorf("taken over %s after the CLI died, want within the step's interval %s", took, interval)
		}
		if status := c.laptop.must("canary", "status", "echo", "-n", c.ns); !st.Phase.Done() && !strings.Contains(status, "Driven by:  the cluster (pod tunnel-canary-echo-") {
			t.Errorf("status does not name the cluster as the driver:\n%s", status)
		}
		return st
	}
	waitEnd := func(c *canaryLab) *canary.State {
		var st *canary.State
		c.waitFor("the canary ends", 3*time.Minute, func(s *canary.State) bool { st = s; return s.Phase.Done() })
		return st
	}

	t.Run("bad is rolled back", func(t *testing.T) {
		c := newCanaryLab(t)
		c.startLoad(40)
		killAtAStep(c, c.image("fail30", "FAIL_RATE=0.3"))
		st := waitEnd(c)
		if st.Phase != canary.RolledBack || !strings.Contains(st.Reason, "error rate") {
			t.Errorf("ended %s: %s; want rolled back on the error rate", st.Phase, st.Reason)
		}
		c.checkRemoved(lab.EchoImage)
	})

	t.Run("good is promoted though its cluster driver dies too", func(t *testing.T) {
		c := newCanaryLab(t)
		c.startLoad(40)
		v := c.image("v6")
		start := time.Now()
		// A check of its own, for the dashboard's panel of checks.
		st := killAtAStep(c, v, "--check", `served: sum(rate(traefik_service_requests_total{{canary}}[{{interval}}])) >= 0`)
		if st.Phase.Done() {
			t.Fatalf("the canary ended before its cluster driver could be killed: %s", st.Reason)
		}
		first := st.Driver.Host
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := kubectl(ctx, node, "delete", "pod", "-n", c.ns, first, "--grace-period=0", "--force"); err != nil {
			t.Fatalf("kill the driving pod: %v\n%s", err, out)
		}
		c.waitFor("another pod drives", 2*time.Minute, func(s *canary.State) bool {
			return s.Phase.Done() || (s.Driver != nil && s.Driver.Cluster && s.Driver.Host != first)
		})
		st = waitEnd(c)
		if st.Phase != canary.Promoted {
			t.Errorf("ended %s: %s; want promoted", st.Phase, st.Reason)
		}
		c.checkRemoved(v)
		// The Job ends with the canary; its account and role go with it.
		eventually(t, time.Minute, "the standby job completes", func() (bool, string) {
			j, err := h.Client.BatchV1().Jobs(c.ns).Get(ctx, "tunnel-canary-echo", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return j.Status.Succeeded == 1, j.Status.String()
		})
		// The canary's dashboard drew all of it: the gateway's figures, and
		// the standby's steps, checks and step annotations.
		dashboardReturnsData(t, "canary.json", map[string]string{"service": c.ns + "-echo"}, start)
	})
}
