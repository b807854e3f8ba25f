package canary

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"

	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/rollout"
)

// Runner starts and drives canaries from the CLI. Every phase's work can be
// done again, so a Runner that dies anywhere is replaced by `resume`.
type Runner struct {
	Store    Store
	Work     Workloads
	Dyn      dynamic.Interface
	Me       *Driver
	Progress func(string)
}

// ErrRolledBack is returned when a canary ends without being promoted.
var ErrRolledBack = errors.New("rolled back")

// MaxChecks is how many analyses a record keeps.
const MaxChecks = 20

// Start checks everything a canary needs before it creates anything (the
// Service, its Deployment, the route, Prometheus), records the canary and
// drives it to its end.
func (r *Runner) Start(ctx context.Context, spec Spec) error {
	st, err := r.Plan(ctx, spec)
	if err != nil {
		return err
	}
	if err := r.Store.Create(ctx, st); err != nil {
		return err
	}
	return r.Drive(ctx, spec.Service)
}

// Plan validates spec against the cluster and returns the canary's first record.
func (r *Runner) Plan(ctx context.Context, spec Spec) (*State, error) {
	ns := r.Work.Namespace
	for _, c := range spec.Custom {
		if _, err := ParseCheck(c.Name + ": " + c.Expr); err != nil {
			return nil, err
		}
	}
	var match *Match
	if spec.Match != "" {
		var err error
		if match, err = ParseMatch(spec.Match); err != nil {
			return nil, err
		}
		spec.Match = match.String()
	}
	need := append(access.Verbs("", "services", "get", "list", "create", "patch", "delete"),
		access.Verbs("apps", "deployments", "get", "list", "create", "patch", "delete")...)
	need = append(need, access.Verbs("", "configmaps", "get", "create", "update")...)
	if err := access.Check(ctx, r.Work.CS, ns, "a canary there needs", need...); err != nil {
		return nil, err
	}
	_, dep, err := r.Work.Stable(ctx, spec.Service)
	if err != nil {
		return nil, err
	}
	ci, err := Container(dep, spec.Container)
	if err != nil {
		return nil, err
	}
	spec.Container = dep.Spec.Template.Spec.Containers[ci].Name
	// One name for the canary's Deployment and Service, which the
	// gateway's metrics carry.
	name := spec.Service + "-canary"
	if err := r.Work.Free(ctx, name, spec.Service); err != nil {
		return nil, err
	}
	b := Backends{Namespace: r.Work.Namespace, Stable: spec.Service, Canary: name}
	router, err := FindRouter(ctx, r.Dyn, b, spec.Route)
	if err != nil {
		return nil, err
	}
	routeAccess := access.Verbs("gateway.networking.k8s.io", "httproutes", "get", "update")
	if routeKind(router.Ref()) == KindMapping {
		routeAccess = access.Verbs("getambassador.io", "mappings", "get", "patch", "delete")
	}
	if err := access.Check(ctx, r.Work.CS, ns, "a canary on "+router.Ref()+" needs", routeAccess...); err != nil {
		return nil, err
	}
	if len(spec.Steps) == 0 {
		return nil, errors.New("a canary needs at least one step")
	}
	if spec.Steps[0] == MatchStep && match == nil {
		return nil, errors.New("--steps: the match step needs --match to say which requests")
	}
	// The route must carry the widest split (the last step's weight and
	// the match) before anything is made: a match the route cannot
	// express, or a rule too many, is refused by the gateway's own schema.
	if err := router.Try(ctx, Split{Weight: spec.Steps[len(spec.Steps)-1], Match: match}); err != nil {
		return nil, err
	}
	if spec.Metrics == "" {
		spec.Metrics = map[string]string{KindHTTPRoute: "traefik", KindMapping: "emissary"}[routeKind(router.Ref())]
	}
	d, ok := Dialects[spec.Metrics]
	if !ok {
		return nil, fmt.Errorf("--metrics %s: unknown, want traefik or emissary", spec.Metrics)
	}
	prom, err := NewPrometheus(spec.Prometheus, d)
	if err != nil {
		return nil, err
	}
	if _, err := prom.scalar(ctx, "vector(1)"); err != nil {
		return nil, fmt.Errorf("prometheus at %s does not answer: %w", spec.Prometheus, err)
	}
	now := time.Now().UTC()
	st := &State{
		Spec: spec, Namespace: r.Work.Namespace, Stable: dep.Name, Canary: name, Port: router.Port(),
		StableImage: dep.Spec.Template.Spec.Containers[ci].Image,
		Route:       router.Ref(), Phase: Starting, Started: now, StartedBy: r.Me.User,
	}
	// Each check once now: a query Prometheus refuses (a parse error of its
	// version's, matching that fails) is refused before anything is made;
	// no data is only no traffic yet.
	values, err := prom.customChecks(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("prometheus at %s: %w", spec.Prometheus, err)
	}
	for _, v := range values {
		if v.Problem != "" {
			return nil, fmt.Errorf("--check %s: %s", v.Name, v.Problem)
		}
	}
	return st, nil
}

func routeKind(ref string) string {
	kind, _, _ := strings.Cut(ref, "/")
	return kind
}

// ErrTakenOver means another CLI took the canary's lease from this one.
var ErrTakenOver = errors.New("was taken over")

// ErrDriven means another CLI drives the canary now.
type ErrDriven struct{ By *Driver }

func (e *ErrDriven) Error() string {
	return fmt.Sprintf("the canary is driven by %s, who renewed it %s ago", e.By, time.Since(e.By.Renewed).Round(time.Second))
}

// Drive takes the canary's lease (waiting for a dead driver's to run out)
// and works it to its end: nil when promoted, ErrRolledBack with the
// reason otherwise. When ctx ends, the canary stays where it is, for
// `resume`.
func (r *Runner) Drive(ctx context.Context, service string) error {
	return r.drive(ctx, service, false)
}

// drive is Drive; quiet says nothing while it waits for another's lease.
func (r *Runner) drive(ctx context.Context, service string, quiet bool) error {
	host, _ := os.Hostname()
	waiting := quiet
	for {
		err := r.Store.Update(ctx, service, func(st *State) error {
			if st.Driver.Holds(time.Now(), host) && !st.Driver.same(r.Me) {
				return &ErrDriven{By: st.Driver}
			}
			r.Me.Renewed = time.Now().UTC()
			st.Driver = r.Me
			return nil
		})
		var driven *ErrDriven
		if !errors.As(err, &driven) {
			if err != nil {
				return err
			}
			break
		}
		if !waiting {
			r.Progress(driven.Error() + "; waiting for its lease to run out")
			waiting = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	defer func() {
		// Hand the canary over at once to whoever resumes it.
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = r.Store.Update(c, service, func(st *State) error {
			if st.Driver.same(r.Me) {
				st.Driver = nil
			}
			return nil
		})
	}()
	first, failures := true, 0
	for {
		st, err := r.Store.Get(ctx, service)
		if err != nil {
			return err
		}
		if !st.Driver.same(r.Me) {
			return fmt.Errorf("the canary of %s %w by %s", service, ErrTakenOver, st.Driver)
		}
		if st.Phase.Done() {
			return result(st)
		}
		next, err := r.step(ctx, st, first)
		first = false
		switch {
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("stopped; the canary of %s keeps %s: tunnel canary resume %s, or abort it", service, DescribeSplit(st.Split()), service)
		case errors.Is(err, ErrTakenOver):
			return err
		case err != nil && failures < maxFailures:
			// Every phase can be done again: a hiccup of the API server
			// or the gateway need not strand the canary.
			failures++
			r.Progress(fmt.Sprintf("Trying again (%d of %d): %v", failures, maxFailures, err))
			next = retryAfter
		case err != nil:
			return fmt.Errorf("%w; the canary of %s keeps %s: tunnel canary resume %s, or abort it", err, service, DescribeSplit(st.Split()), service)
		default:
			failures = 0
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped; the canary of %s keeps %s: tunnel canary resume %s, or abort it", service, DescribeSplit(st.Split()), service)
		case <-time.After(next):
		}
	}
}

// A driver tries a failing phase again maxFailures times, retryAfter apart,
// before it gives up and leaves the canary for resume.
const (
	maxFailures = 5
	retryAfter  = 2 * time.Second
)

func (d *Driver) same(o *Driver) bool {
	return d != nil && o != nil && d.Host == o.Host && d.PID == o.PID && d.User == o.User
}

func result(st *State) error {
	switch st.Phase {
	case Promoted:
		return nil
	case Aborted:
		return fmt.Errorf("the canary of %s was aborted: %s", st.Spec.Service, st.Reason)
	}
	return fmt.Errorf("the canary of %s %w: %s", st.Spec.Service, ErrRolledBack, st.Reason)
}

// update writes fn's change as this driver, and renews the lease.
func (r *Runner) update(ctx context.Context, st *State, fn func(*State)) error {
	return r.Store.Update(ctx, st.Spec.Service, func(cur *State) error {
		if !cur.Driver.same(r.Me) {
			return fmt.Errorf("the canary of %s %w by %s", st.Spec.Service, ErrTakenOver, cur.Driver)
		}
		fn(cur)
		cur.Driver.Renewed = time.Now().UTC()
		*st = *cur
		return nil
	})
}

func (r *Runner) backends(st *State) Backends {
	return Backends{Namespace: st.Namespace, Stable: st.Spec.Service, Canary: st.Canary, Port: st.Port}
}

// step does the work of the canary's phase and says when to look again.
func (r *Runner) step(ctx context.Context, st *State, first bool) (time.Duration, error) {
	router, err := OpenRouter(r.Dyn, r.backends(st), st.Route)
	if err != nil {
		return 0, err
	}
	if st.Request != "" {
		req := st.Request
		if err := r.update(ctx, st, func(s *State) {
			s.Request = ""
			switch {
			case req == "abort" && !s.Phase.Done():
				s.Phase, s.Reason = Aborting, "aborted by "+s.Driver.User
			case req == "promote" && s.Phase == Progressing:
				s.Phase, s.Reason = Promoting, "promoted by "+s.Driver.User
			}
		}); err != nil {
			return 0, err
		}
	}
	switch st.Phase {
	case Starting:
		return 0, r.start(ctx, st, router)
	case Progressing:
		// The record steers the route and names the Prometheus that
		// judges: it must still be the one this canary started with.
		if _, err := r.Work.Trust(ctx, st); err != nil {
			return 0, err
		}
		if first {
			// A driver that died between moving traffic and writing it down
			// left the route at another weight: the record is the truth.
			if err := router.Split(ctx, st.Split()); err != nil {
				return 0, err
			}
		}
		return r.progress(ctx, st, router)
	case Promoting:
		return 0, r.promote(ctx, st, router)
	case RollingBack, Aborting:
		return 0, r.rollBack(ctx, st, router)
	}
	return 0, fmt.Errorf("the canary of %s is in an unknown phase %q", st.Spec.Service, st.Phase)
}

func (r *Runner) start(ctx context.Context, st *State, router Router) error {
	svc, dep, err := r.Work.Stable(ctx, st.Spec.Service)
	if err == nil {
		var ci int
		if ci, err = Container(dep, st.Spec.Container); err == nil {
			r.Progress(fmt.Sprintf("Creating deployment %s with image %s", st.Canary, st.Spec.Image))
			err = r.Work.Create(ctx, svc, dep, st.Canary, st.Spec.Image, ci, witness(st))
		}
	}
	if err == nil {
		err = rollout.Wait(ctx, r.Work.CS, st.Namespace, st.Canary, st.Spec.Timeout, r.Progress)
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return r.update(ctx, st, func(s *State) {
			s.Phase, s.Reason = RollingBack, "the canary did not start: "+err.Error()
		})
	}
	w := st.Spec.Steps[0]
	split := Split{Weight: w, Match: st.Spec.match()}
	if err := router.Split(ctx, split); err != nil {
		return err
	}
	r.Progress(fmt.Sprintf("Step 1 of %d: %s to %s, judged after %s", len(st.Spec.Steps), DescribeSplit(split), st.Canary, time.Duration(st.Spec.Interval)))
	return r.update(ctx, st, func(s *State) {
		now := time.Now().UTC()
		s.Phase, s.Step, s.StepStarted = Progressing, 0, now
		s.Steps = append(s.Steps, Record{Step: 0, Weight: w, Started: now})
	})
}
