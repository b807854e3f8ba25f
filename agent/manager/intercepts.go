package manager

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

// Errors the intercept table returns; grpcError maps them to codes.
var (
	errInterceptConflict    = errors.New("intercept conflict")
	errInterceptNotFound    = errors.New("no such intercept")
	errInterceptNotYours    = errors.New("intercept belongs to another user")
	errInterceptInvalid     = errors.New("invalid intercept")
	errInterceptNotVerified = errors.New("unverified user")
	errInterceptForbidden   = errors.New("forbidden")
)

// interceptTable holds every session's intercepts. A sidecar watches the
// part on its workload; an intercept lives as long as the session that made
// it, so a laptop that vanishes gives its traffic back to the app.
type interceptTable struct {
	headers []string // what personal intercepts may match on

	mu      sync.Mutex // guards following
	next    uint64
	byID    map[uint64]*interceptEntry
	changed chan struct{} // closed and replaced on every change
}

type interceptEntry struct {
	pb    *managerpb.Intercept
	owner *session
}

func newInterceptTable(headers []string) *interceptTable {
	if len(headers) == 0 {
		headers = DefaultInterceptHeaders
	}
	return &interceptTable{headers: headers, byID: map[uint64]*interceptEntry{}, changed: make(chan struct{})}
}

// DefaultInterceptHeaders are the header names personal intercepts may
// match on unless the install names others: a prefix of tunnel's own, which
// no client sends by chance, so a personal intercept can never take a
// teammate's traffic the way one on User-Agent or Cookie would.
var DefaultInterceptHeaders = []string{"x-tunnel-*"}

// headerAllowed says whether name matches one of allowed: exact names, or
// prefixes ending in "*", without regard to case.
func headerAllowed(name string, allowed []string) bool {
	name = strings.ToLower(name)
	for _, a := range allowed {
		a = strings.ToLower(a)
		if p, ok := strings.CutSuffix(a, "*"); ok && strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
		if a == name {
			return true
		}
	}
	return false
}

// batch says whether an intercept's workload is a Job or CronJob.
func batch(ref string) bool {
	r, err := workload.ParseRef(ref)
	return err == nil && workload.IsBatch(r.Kind)
}

// validate checks a spec's own fields and canonicalizes its header name.
func validate(spec *managerpb.InterceptSpec, allowedHeaders []string) error {
	switch {
	case spec.GetName() == "" || spec.GetNamespace() == "" || spec.GetWorkload() == "":
		return fmt.Errorf("%w: name, namespace and workload are required", errInterceptInvalid)
	case batch(spec.GetWorkload()):
		// A Job or CronJob is only replaced (suspended): held by no port,
		// as nothing sends its pods traffic, and global.
		if spec.GetPort() != 0 || spec.GetMode() != managerpb.InterceptMode_GLOBAL {
			return fmt.Errorf("%w: a Job or CronJob is only replaced, by an intercept of port 0 that is global", errInterceptInvalid)
		}
		return nil
	case spec.GetPort() == 0 || spec.GetPort() > 65535:
		return fmt.Errorf("%w: port %d", errInterceptInvalid, spec.GetPort())
	}
	switch spec.GetMode() {
	case managerpb.InterceptMode_GLOBAL, managerpb.InterceptMode_MIRROR:
	case managerpb.InterceptMode_PERSONAL:
		if spec.GetHeaderName() == "" || spec.GetHeaderValue() == "" {
			return fmt.Errorf("%w: a personal intercept needs a header name and value", errInterceptInvalid)
		}
		if !headerAllowed(spec.GetHeaderName(), allowedHeaders) {
			return fmt.Errorf("%w: personal intercepts here match on %s, not %s (an admin allows more with tunnel install --allow-header NAME)",
				errInterceptInvalid, strings.Join(allowedHeaders, ", "), spec.GetHeaderName())
		}
		spec.HeaderName = http.CanonicalHeaderKey(spec.GetHeaderName())
	default:
		return fmt.Errorf("%w: mode %v", errInterceptInvalid, spec.GetMode())
	}
	return nil
}

// add records spec for owner. Re-adding an intercept the session already
// holds under the same name replaces it (a laptop re-registers after a
// reconnect); anything that would take traffic another intercept holds is
// refused with a sentence naming the holder.
func (t *interceptTable) add(owner *session, spec *managerpb.InterceptSpec) (*managerpb.Intercept, error) {
	if err := validate(spec, t.headers); err != nil {
		return nil, err
	}
	user, host := owner.who()
	if user == "" {
		owner.mu.Lock()
		why := owner.why
		owner.mu.Unlock()
		if why == "" {
			why = "the session has not said hello"
		}
		return nil, fmt.Errorf("%w: the manager could not verify which Kubernetes user you are (%s), and intercepts belong to a user", errInterceptNotVerified, why)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var replace uint64
	var ownClash error
	for id, e := range t.byID {
		o := e.pb.GetSpec()
		if o.GetNamespace() != spec.GetNamespace() {
			continue
		}
		if o.GetName() == spec.GetName() {
			// A laptop whose new session comes before the manager has
			// dropped its old one (a Wi-Fi switch) takes its intercept
			// over: the same verified user, from the same host.
			if e.owner != owner && (e.pb.GetUser() != user || e.pb.GetHost() != host || host == "") {
				return nil, fmt.Errorf("%w: an intercept named %q already exists in namespace %s, held by %s; choose another --name",
					errInterceptConflict, spec.GetName(), spec.GetNamespace(), holder(e))
			}
			replace = id
			continue
		}
		if o.GetWorkload() != spec.GetWorkload() || o.GetPort() != spec.GetPort() {
			continue
		}
		if err := clash(spec, e); err != nil {
			// Name someone else's intercept when there is one: that is
			// whom the user must talk to.
			if !owns(owner, e) {
				return nil, err
			}
			ownClash = err
		}
	}
	if ownClash != nil {
		return nil, ownClash
	}
	if replace != 0 {
		delete(t.byID, replace)
	}
	key := make([]byte, rpc.DirectKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	t.next++
	pb := &managerpb.Intercept{
		Spec:      proto.Clone(spec).(*managerpb.InterceptSpec),
		Id:        t.next,
		User:      user,
		Host:      host,
		SessionId: owner.id,
		Created:   time.Now().UTC().Format(time.RFC3339),
		DirectKey: key,
	}
	t.byID[pb.Id] = &interceptEntry{pb: pb, owner: owner}
	t.changedLocked()
	return proto.Clone(pb).(*managerpb.Intercept), nil
}

// clash says whether spec may share its workload port with e.
func clash(spec *managerpb.InterceptSpec, e *interceptEntry) error {
	o := e.pb.GetSpec()
	where := fmt.Sprintf("port %d of %s/%s", spec.GetPort(), spec.GetNamespace(), spec.GetWorkload())
	if r, err := workload.ParseRef(spec.GetWorkload()); err == nil && spec.GetPort() == 0 { // a Job or CronJob: replaced, by no port
		where = r.Describe(spec.GetNamespace())
	}
	switch {
	case o.GetMode() == managerpb.InterceptMode_GLOBAL:
		return fmt.Errorf("%w: %s is already intercepted by %s (intercept %q); they must leave it first",
			errInterceptConflict, where, holder(e), o.GetName())
	case spec.GetMode() == managerpb.InterceptMode_GLOBAL:
		return fmt.Errorf("%w: %s has an intercept by %s (%q), so a global intercept would take their traffic; use a personal one (--http-header)",
			errInterceptConflict, where, holder(e), o.GetName())
	case spec.GetMode() == managerpb.InterceptMode_PERSONAL && o.GetMode() == managerpb.InterceptMode_PERSONAL &&
		o.GetHeaderName() != spec.GetHeaderName():
		// A request may carry both headers: which laptop gets it would
		// depend on the order the sidecar checks them.
		return fmt.Errorf("%w: %s is intercepted by %s on header %s (intercept %q); use that header, with a value of your own",
			errInterceptConflict, where, holder(e), o.GetHeaderName(), o.GetName())
	case spec.GetMode() == managerpb.InterceptMode_PERSONAL && o.GetMode() == managerpb.InterceptMode_PERSONAL &&
		o.GetHeaderValue() == spec.GetHeaderValue():
		return fmt.Errorf("%w: %s already sends requests with %s: %s to %s (intercept %q); choose another header value",
			errInterceptConflict, where, spec.GetHeaderName(), spec.GetHeaderValue(), holder(e), o.GetName())
	}
	return nil
}

// owns says whether caller may end or read e: its session, or another
// session of the same user (the laptop's earlier one, or a second laptop).
func owns(caller *session, e *interceptEntry) bool {
	if caller == nil {
		return false
	}
	if e.owner == caller {
		return true
	}
	user, _ := caller.who()
	return user != "" && user == e.pb.GetUser()
}

func holder(e *interceptEntry) string {
	if h := e.pb.GetHost(); h != "" {
		return fmt.Sprintf("%s on %s", e.pb.GetUser(), h)
	}
	return e.pb.GetUser()
}

// remove ends the intercept ns/name if caller's user owns it.
func (t *interceptTable) remove(caller *session, ns, name string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, e := range t.byID {
		if e.pb.GetSpec().GetNamespace() != ns || e.pb.GetSpec().GetName() != name {
			continue
		}
		if !owns(caller, e) {
			return fmt.Errorf("%w: intercept %q in namespace %s belongs to %s", errInterceptNotYours, name, ns, holder(e))
		}
		delete(t.byID, id)
		t.changedLocked()
		return nil
	}
	return fmt.Errorf("%w: %q in namespace %s", errInterceptNotFound, name, ns)
}

// dropSession ends every intercept s holds; it runs when s ends.
func (t *interceptTable) dropSession(s *session) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for id, e := range t.byID {
		if e.owner == s {
			delete(t.byID, id)
			n++
		}
	}
	if n > 0 {
		t.changedLocked()
	}
	return n
}

// list returns the intercepts in ns (all when ns is empty), sorted by name;
// the header values of intercepts other users hold are withheld, and every
// direct key: its laptop has it from add.
func (t *interceptTable) list(caller *session, ns string) []*managerpb.Intercept {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*managerpb.Intercept
	for _, e := range t.byID {
		if ns != "" && e.pb.GetSpec().GetNamespace() != ns {
			continue
		}
		pb := proto.Clone(e.pb).(*managerpb.Intercept)
		pb.DirectKey = nil
		if !owns(caller, e) {
			if pb.Spec.HeaderValue != "" {
				pb.Spec.HeaderValue = "(hidden)"
			}
		}
		out = append(out, pb)
	}
	slices.SortFunc(out, func(a, b *managerpb.Intercept) int {
		return strings.Compare(a.GetSpec().GetNamespace()+"/"+a.GetSpec().GetName(), b.GetSpec().GetNamespace()+"/"+b.GetSpec().GetName())
	})
	return out
}

// workload returns the intercepts on ns/name (what its sidecar needs, header
// values included) and a channel closed at the next change.
func (t *interceptTable) workload(ns, name string) ([]*managerpb.Intercept, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*managerpb.Intercept
	for _, e := range t.byID {
		if s := e.pb.GetSpec(); s.GetNamespace() == ns && s.GetWorkload() == name {
			out = append(out, proto.Clone(e.pb).(*managerpb.Intercept))
		}
	}
	slices.SortFunc(out, func(a, b *managerpb.Intercept) int { return int(a.GetId()) - int(b.GetId()) })
	return out, t.changed
}

// lookup finds the intercept a sidecar's stream names.
func (t *interceptTable) lookup(id uint64) (*managerpb.Intercept, *session, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.byID[id]
	if !ok {
		return nil, nil, false
	}
	return e.pb, e.owner, true
}

func (t *interceptTable) changedLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}
