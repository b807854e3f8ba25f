package canary

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"

	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/rollout"
)

// Runner starts and drives canaries from the CLI. Every phase's work can be
// done again, so a Runner that dies anywhere is replaced by `resume`.
type Runner struct {
	Store    Store
	Leases   Leases
	Work     Workloads
	Dyn      dynamic.Interface
	Me       *Driver
	Progress func(string)
	// Standby, when set, is the driver in the cluster this Runner starts
	// beside a canary and removes at its end.
	Standby *Standby
	// Witness, when set, is what the canary started as, from the user's
	// own hand (the standby's Job): a record that differs is not acted on.
	Witness map[string]string

	ttl     time.Duration // the lease's duration
	renewed time.Time     // when this driver sent its last renewal that succeeded (keepLease's alone)
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
	routeAccess = append(routeAccess, access.Verbs("coordination.k8s.io", "leases", "get", "create", "update")...)
	if err := access.Check(ctx, r.Work.CS, ns, "a canary on "+router.Ref()+" needs", routeAccess...); err != nil {
		return nil, err
	}
	if err := r.checkStandby(ctx, ns, spec.Service); err != nil {
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

// checkStandby asks whether the user may make the canary's driver in the
// cluster: its Role may hold only what its maker holds (RBAC's own rule),
// which is reading pods besides what Plan checked, and making it. Without
// those rights a canary the user did not insist on driving in the cluster
// is driven from this CLI only, and says so.
func (r *Runner) checkStandby(ctx context.Context, ns, service string) error {
	if r.Standby == nil || r.Standby.Image == "" {
		return nil
	}
	need := append(access.Verbs("batch", "jobs", "get", "create", "patch", "delete"), access.Verbs("", "serviceaccounts", "get", "create", "update")...)
	need = append(need, access.Verbs("rbac.authorization.k8s.io", "roles", "get", "create", "update")...)
	need = append(need, access.Verbs("rbac.authorization.k8s.io", "rolebindings", "get", "create", "update")...)
	need = append(need, access.Verbs("", "pods", "list")...)
	need = append(need, access.Verbs("discovery.k8s.io", "endpointslices", "list")...)
	err := access.Check(ctx, r.Work.CS, ns, "a canary driven in the cluster when this CLI stops (--driver cluster) needs", need...)
	if n := StandbyName(service); err == nil && len(n) > 52 {
		// The Job's pods carry its name in a label of at most 63.
		err = fmt.Errorf("%w: its job's name %s would be too long for Kubernetes", errNoStandby, n)
	}
	if err == nil || r.Standby.Required || !(errors.Is(err, access.ErrForbidden) || errors.Is(err, errNoStandby)) {
		return err
	}
	r.Progress(fmt.Sprintf("Driven from this CLI only (%v); if it stops, `tunnel canary resume` picks the canary up", err))
	r.Standby.Image = ""
	return nil
}

// errNoStandby is a canary that cannot have a driver in the cluster.
var errNoStandby = errors.New("no driver in the cluster")

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
	st, err := r.Store.Get(ctx, service)
	if err != nil {
		return err
	}
	r.ttl = LeaseDuration(time.Duration(st.Spec.Interval))
	waiting := quiet
	var seen Observed
	for {
		sent := time.Now()
		err := r.Leases.Acquire(ctx, service, r.Me, r.ttl, &seen)
		var driven *ErrDriven
		if !errors.As(err, &driven) {
			if err != nil {
				return err
			}
			r.renewed = sent
			break
		}
		if !waiting {
			r.Progress(driven.Error() + "; waiting for its lease to run out")
			waiting = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	// The work stops when the lease is lost: before anyone else may take
	// it (RenewDeadline), so two drivers never act at once.
	work, stop := context.WithCancelCause(ctx)
	renewing := make(chan struct{})
	go func() {
		defer close(renewing)
		r.keepLease(work, stop, service)
	}()
	defer func() {
		stop(nil)
		<-renewing
		// Hand the canary over at once to whoever waits for it.
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = r.Store.Update(c, service, func(st *State) error {
			if st.Driver.same(r.Me) {
				st.Driver = nil
			}
			return nil
		})
		_ = r.Leases.Release(c, service, r.Me)
	}()
	// The record names its driver too, for status and for a driver that
	// lost the lease to find out at its next write.
	r.Me.Renewed = time.Now().UTC()
	if err := r.Store.Update(work, service, func(st *State) error { st.Driver = r.Me; return nil }); err != nil {
		return err
	}
	stopped := func(st *State) error {
		if cause := context.Cause(work); errors.Is(cause, ErrTakenOver) {
			return cause
		}
		if st == nil {
			return fmt.Errorf("stopped; the canary of %s stays where it is", service)
		}
		if r.Standby != nil && r.Standby.Image != "" {
			return fmt.Errorf("stopped here; the canary of %s keeps %s, and its driver in the cluster takes it over (tunnel canary status %s)", service, DescribeSplit(st.Split()), service)
		}
		return fmt.Errorf("stopped; the canary of %s keeps %s: tunnel canary resume %s, or abort it", service, DescribeSplit(st.Split()), service)
	}
	first, failures := true, 0
	for {
		st, err := r.Store.Get(work, service)
		if err != nil {
			if work.Err() != nil {
				return stopped(st)
			}
			return err
		}
		if !st.Driver.same(r.Me) {
			return fmt.Errorf("the canary of %s %w by %s", service, ErrTakenOver, st.Driver)
		}
		if st.Phase.Done() {
			return result(st)
		}
		next, err := r.step(work, st, first)
		first = false
		switch {
		case err != nil && work.Err() != nil:
			return stopped(st)
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
		case <-work.Done():
			return stopped(st)
		case <-time.After(next):
		}
	}
}

// keepLease renews the lease until work ends, and ends work when the
// lease is another's, or when no renewal has succeeded for RenewDeadline
// since it was sent (measured on this machine's clock, from before the
// request left: the other side waits a whole duration from after it saw
// the last one land).
func (r *Runner) keepLease(work context.Context, stop context.CancelCauseFunc, service string) {
	for {
		select {
		case <-work.Done():
			return
		case <-time.After(RenewEvery(r.ttl)):
		}
		sent := time.Now()
		c, cancel := context.WithTimeout(work, RenewEvery(r.ttl))
		err := r.Leases.Renew(c, service, r.Me)
		cancel()
		switch {
		case err == nil:
			r.renewed = sent
		case errors.Is(err, ErrTakenOver):
			stop(err)
			return
		case time.Since(r.renewed) > RenewDeadline(r.ttl):
			stop(fmt.Errorf("the canary of %s %w: its lease could not be renewed for %s (%v)", service, ErrTakenOver, time.Since(r.renewed).Round(time.Second), err))
			return
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

// update writes fn's change as this driver.
func (r *Runner) update(ctx context.Context, st *State, fn func(*State)) error {
	return r.Store.Update(ctx, st.Spec.Service, func(cur *State) error {
		if !cur.Driver.same(r.Me) {
			return fmt.Errorf("the canary of %s %w by %s", st.Spec.Service, ErrTakenOver, cur.Driver)
		}
		fn(cur)
		*st = *cur
		return nil
	})
}

func (r *Runner) backends(st *State) Backends {
	return Backends{Namespace: st.Namespace, Stable: st.Spec.Service, Canary: st.Canary, Port: st.Port}
}

// step does the work of the canary's phase and says when to look again.
func (r *Runner) step(ctx context.Context, st *State, first bool) (time.Duration, error) {
	if r.Witness != nil {
		if err := CheckWitness(st, r.Witness); err != nil {
			return 0, err
		}
	}
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
	var err error
	if r.Standby != nil && r.Standby.Image != "" {
		r.Progress(fmt.Sprintf("Starting the canary's driver in the cluster (job %s), which takes over if this one stops", StandbyName(st.Spec.Service)))
		// A standby that cannot be made rolls back like a canary that
		// cannot start, which removes what of it was made.
		if err = r.Standby.Apply(ctx, st); err != nil {
			err = fmt.Errorf("its driver in the cluster: %w", err)
		}
	}
	var svc *corev1.Service
	var dep *appsv1.Deployment
	if err == nil {
		svc, dep, err = r.Work.Stable(ctx, st.Spec.Service)
	}
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
