package canary

import (
	"context"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/rollout"
)

// poll is how often a driver looks at its record between analyses, for
// promote and abort requests from other terminals and to renew its lease.
const poll = time.Second

// progress judges the current step once its interval is over: healthy
// moves to the next step (or to promotion after the last), a failed
// threshold rolls back, and too few requests waits another interval, up
// to MaxIdle of them.
func (r *Runner) progress(ctx context.Context, st *State, router Router) (time.Duration, error) {
	interval := time.Duration(st.Spec.Interval)
	if wait := time.Until(st.StepStarted.Add(interval)); wait > 0 {
		return min(wait, poll), nil
	}
	d := Dialects[st.Spec.Metrics]
	prom, err := NewPrometheus(st.Spec.Prometheus, d)
	if err != nil {
		return 0, err
	}
	canary, err := prom.Sample(ctx, d.Selector(st.Namespace, st.Canary, st.Port), interval)
	if err == nil {
		var stable Sample
		if stable, err = prom.Sample(ctx, d.Selector(st.Namespace, st.Spec.Service, st.Port), interval); err == nil {
			var custom []CheckValue
			if custom, err = prom.customChecks(ctx, st); err == nil {
				return 0, r.judge(ctx, st, router, canary, stable, custom)
			}
		}
	}
	// Prometheus away: the canary stays at its step, and asks again.
	r.Progress("Cannot judge yet: " + err.Error())
	return retryPrometheus, nil
}

// retryPrometheus is how long a driver waits to ask an absent Prometheus again.
const retryPrometheus = 5 * time.Second

// judge moves the canary on from one analysis of its step.
func (r *Runner) judge(ctx context.Context, st *State, router Router, canary, stable Sample, custom []CheckValue) error {
	verdict, enough := Judge(st.Spec, canary, stable, custom...)
	check := Check{At: time.Now().UTC(), Step: st.Step, Weight: st.Weight(), Canary: canary, Stable: stable, Custom: custom, Verdict: verdict}
	if verdict == "" {
		check.Verdict = "healthy"
	}
	r.Progress(fmt.Sprintf("Step %d of %d (%s): %s: canary %s; stable %s%s", st.Step+1, len(st.Spec.Steps), DescribeSplit(st.Split()), check.Verdict, canary, stable, customLine(custom)))
	last := st.Step == len(st.Spec.Steps)-1
	next := st.Step + 1
	if verdict == "" && !last {
		// Move the traffic first: a driver that dies before writing it
		// down is corrected by the next one, which sets the recorded weight.
		split := Split{Weight: st.Spec.Steps[next], Match: st.Spec.match()}
		if err := router.Split(ctx, split); err != nil {
			return err
		}
		r.Progress(fmt.Sprintf("Step %d of %d: %s to %s", next+1, len(st.Spec.Steps), DescribeSplit(split), st.Canary))
	}
	return r.update(ctx, st, func(s *State) {
		now := time.Now().UTC()
		s.Checks = append(s.Checks, check)
		if len(s.Checks) > MaxChecks {
			s.Checks = s.Checks[len(s.Checks)-MaxChecks:]
		}
		switch {
		case !enough:
			s.Idle++
			s.StepStarted = now
			if s.Idle >= s.Spec.MaxIdle {
				s.Phase, s.Reason = RollingBack, fmt.Sprintf("%s, %d intervals in a row", verdict, s.Idle)
			}
		case verdict != "":
			s.Phase, s.Reason = RollingBack, verdict
		case last:
			s.Phase = Promoting
		default:
			s.Idle = 0
			s.Step, s.StepStarted = next, now
		}
		if s.Phase != Progressing || s.Step != st.Step {
			endRecord(s, now, check.Verdict)
		}
		if s.Phase == Progressing && s.Step != st.Step {
			s.Steps = append(s.Steps, Record{Step: s.Step, Weight: s.Spec.Steps[s.Step], Started: now})
		}
	})
}

func endRecord(s *State, now time.Time, verdict string) {
	if n := len(s.Steps); n > 0 && s.Steps[n-1].Ended == nil {
		s.Steps[n-1].Ended, s.Steps[n-1].Verdict = &now, verdict
	}
}

// promote gives the stable Deployment the new image while the canary still
// carries its share, then moves all traffic back to stable and removes
// the canary.
func (r *Runner) promote(ctx context.Context, st *State, router Router) error {
	if gone, err := r.Work.Trust(ctx, st); err != nil || gone {
		if err == nil {
			err = fmt.Errorf("%w: the canary deployment %s is gone, so the image to promote cannot be checked", errUntrusted, st.Canary)
		}
		return err
	}
	r.Progress(fmt.Sprintf("Promoting: deployment %s gets image %s", st.Stable, st.Spec.Image))
	if err := r.Work.SetImage(ctx, st.Stable, st.Spec.Container, st.Spec.Image); err != nil {
		return err
	}
	if err := rollout.Wait(ctx, r.Work.CS, st.Namespace, st.Stable, st.Spec.Timeout, r.Progress); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return r.update(ctx, st, func(s *State) {
			s.Phase, s.Reason = RollingBack, "the stable deployment did not roll out with the new image: "+err.Error()
		})
	}
	if err := r.takeOut(ctx, st, router); err != nil {
		return err
	}
	r.Progress(fmt.Sprintf("Promoted: %s runs %s", st.Stable, st.Spec.Image))
	if err := r.update(ctx, st, func(s *State) {
		now := time.Now().UTC()
		endRecord(s, now, "promoted")
		s.Phase = Promoted
		if s.Reason == "" {
			s.Reason = "every step was healthy"
		}
	}); err != nil {
		return err
	}
	r.endStandby(ctx, st)
	return nil
}

// endStandby removes the driver in the cluster once the canary has ended;
// one that ends it itself is removed by its Job's time to live.
func (r *Runner) endStandby(ctx context.Context, st *State) {
	if r.Standby == nil || r.Me.Cluster {
		return
	}
	if err := r.Standby.Delete(ctx, st.Spec.Service); err != nil {
		r.Progress(err.Error())
	}
}

// rollBack sends all traffic to stable (with its old image, should a
// promotion have begun) and removes the canary.
func (r *Runner) rollBack(ctx context.Context, st *State, router Router) error {
	r.Progress(fmt.Sprintf("Rolling back: %s", st.Reason))
	gone, terr := r.Work.Trust(ctx, st)
	if terr != nil {
		return terr
	}
	dep, err := r.Work.CS.AppsV1().Deployments(st.Namespace).Get(ctx, st.Stable, metav1.GetOptions{})
	if err == nil && !gone { // the stable image is checked only while the canary's Deployment says it
		if ci, cerr := Container(dep, st.Spec.Container); cerr == nil && dep.Spec.Template.Spec.Containers[ci].Image != st.StableImage {
			r.Progress(fmt.Sprintf("Deployment %s goes back to image %s", st.Stable, st.StableImage))
			if err := r.Work.SetImage(ctx, st.Stable, st.Spec.Container, st.StableImage); err != nil {
				return err
			}
			if err := rollout.Wait(ctx, r.Work.CS, st.Namespace, st.Stable, st.Spec.Timeout, r.Progress); err != nil {
				return err
			}
		}
	}
	if err := r.takeOut(ctx, st, router); err != nil {
		return err
	}
	if err := r.update(ctx, st, func(s *State) {
		endRecord(s, time.Now().UTC(), s.Reason)
		if s.Phase == Aborting {
			s.Phase = Aborted
		} else {
			s.Phase = RolledBack
		}
	}); err != nil {
		return err
	}
	r.endStandby(ctx, st)
	return nil
}

// gatewaySync is how long a gateway may take to apply a route change:
// requests it still sends to the canary must find it there.
const gatewaySync = 2 * time.Second

// takeOut moves all traffic to stable, waits for the gateway to take the
// change, then removes the canary's backend, Deployment and Service.
func (r *Runner) takeOut(ctx context.Context, st *State, router Router) error {
	if err := router.Split(ctx, Split{}); err != nil {
		r.Progress("Could not move traffic back on " + router.Ref() + ": " + err.Error())
	} else {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(gatewaySync):
		}
	}
	if err := router.Remove(ctx); err != nil {
		return err
	}
	return r.Work.Delete(ctx, st.Canary, st.Spec.Service)
}

// customLine is the custom checks' values for a progress line.
func customLine(custom []CheckValue) string {
	var b strings.Builder
	for _, c := range custom {
		b.WriteString("; " + c.String())
	}
	return b.String()
}
