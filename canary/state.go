// Package canary ships a new image to a share of a Service's traffic
// through the cluster's gateway, step by step, judging each step by the
// gateway's metrics in Prometheus, and promotes or rolls back by itself.
//
// There is no controller in the cluster: the CLI that starts a canary
// drives it, and everything it knows lives in one ConfigMap, so another
// terminal can watch it and `resume` can finish it after the CLI dies.
package canary

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Phase is where a canary is in its life.
type Phase string

const (
	Starting    Phase = "Starting"    // the canary workload is being created
	Progressing Phase = "Progressing" // a share of traffic goes to it, judged each interval
	Promoting   Phase = "Promoting"   // the stable workload takes the new image
	RollingBack Phase = "RollingBack" // a metric failed: traffic goes back to stable
	Aborting    Phase = "Aborting"    // someone asked to stop: traffic goes back to stable
	Promoted    Phase = "Promoted"
	RolledBack  Phase = "RolledBack"
	Aborted     Phase = "Aborted"
)

// Done says whether nothing is left to do.
func (p Phase) Done() bool { return p == Promoted || p == RolledBack || p == Aborted }

// Label marks everything a canary creates with the Service it is for.
const Label = "tunnel.dev/canary"

// FieldManager owns what a canary applies.
const FieldManager = "tunnel-canary"

// Spec is what `canary start` was asked.
type Spec struct {
	Service      string        `json:"service"`
	Image        string        `json:"image"`
	Container    string        `json:"container,omitempty"` // default: the first
	Steps        []int         `json:"steps"`               // percent of traffic, ascending; MatchStep first for a dark launch's
	Match        string        `json:"match,omitempty"`     // the requests a dark launch sends to the canary, as --match reads it
	Interval     Duration      `json:"interval"`
	MaxErrorRate float64       `json:"maxErrorRate"` // a fraction: 0.01 is 1%
	MaxP99       Duration      `json:"maxP99"`
	MinRequests  int           `json:"minRequests"` // per interval, to judge it
	MaxIdle      int           `json:"maxIdle"`     // intervals without MinRequests before rolling back
	Prometheus   string        `json:"prometheus"`
	Route        string        `json:"route,omitempty"`   // KIND/NAME; found when empty
	Metrics      string        `json:"metrics,omitempty"` // query dialect; the route kind's when empty
	Custom       []Custom      `json:"custom,omitempty"`  // the hypothesis's own checks, beside error rate and p99
	Timeout      time.Duration `json:"rolloutTimeout"`
}

// State is a canary's record, kept in the ConfigMap "tunnel-canary-SERVICE".
type State struct {
	Spec        Spec      `json:"spec"`
	Namespace   string    `json:"namespace"`
	Stable      string    `json:"stable"`      // the stable Deployment
	StableImage string    `json:"stableImage"` // its image before the canary
	Canary      string    `json:"canary"`      // the canary's Deployment and Service
	Route       string    `json:"route"`       // KIND/NAME of what steers traffic
	Port        int32     `json:"port"`        // the Service port the route sends to
	Phase       Phase     `json:"phase"`
	Step        int       `json:"step"` // index into Spec.Steps
	StepStarted time.Time `json:"stepStarted"`
	Idle        int       `json:"idle"`              // intervals in a row without enough requests
	Reason      string    `json:"reason,omitempty"`  // why it ended, one sentence
	Request     string    `json:"request,omitempty"` // "promote" or "abort", from another terminal
	Driver      *Driver   `json:"driver,omitempty"`
	Checks      []Check   `json:"checks,omitempty"`
	Steps       []Record  `json:"history,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	StartedBy   string    `json:"startedBy"`
}

// Weight is the share of traffic the canary has now, in percent.
func (s *State) Weight() int {
	if s.Phase != Progressing || s.Step >= len(s.Spec.Steps) {
		if s.Phase == Promoting {
			return s.Spec.Steps[len(s.Spec.Steps)-1]
		}
		return 0
	}
	return s.Spec.Steps[s.Step]
}

// Split is how the route divides traffic now.
func (s *State) Split() Split {
	if s.Phase != Progressing && s.Phase != Promoting {
		return Split{}
	}
	return Split{Weight: s.Weight(), Match: s.Spec.match()}
}

// match is the spec's match, parsed; nil when none (Check refuses a bad one).
func (s *Spec) match() *Match {
	if s.Match == "" {
		return nil
	}
	m, err := ParseMatch(s.Match)
	if err != nil {
		return nil
	}
	return m
}

// Record is one step as it happened: when it had which weight.
type Record struct {
	Step    int        `json:"step"`
	Weight  int        `json:"weight"`
	Started time.Time  `json:"started"`
	Ended   *time.Time `json:"ended,omitempty"`
	Verdict string     `json:"verdict,omitempty"`
}

// Check is one analysis: the canary's metrics beside the stable's.
type Check struct {
	At      time.Time    `json:"at"`
	Step    int          `json:"step"`
	Weight  int          `json:"weight"`
	Canary  Sample       `json:"canary"`
	Stable  Sample       `json:"stable"`
	Custom  []CheckValue `json:"custom,omitempty"`
	Verdict string       `json:"verdict"` // "healthy", "too few requests", or what failed
}

// Driver is what drives a canary (a CLI, or the standby in the cluster);
// it renews its lease as it goes.
type Driver struct {
	User    string    `json:"user"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Cluster bool      `json:"cluster,omitempty"` // the standby Job's pod
	Renewed time.Time `json:"renewed"`
	// From the lease: when this driver took it, and for how long a
	// renewal holds.
	Since time.Time     `json:"since,omitzero"`
	TTL   time.Duration `json:"-"`
}

// LeaseTTL is how long a driver that stopped renewing still holds a canary.
const LeaseTTL = 15 * time.Second

// Holds says whether d still drives a canary at now: its lease is fresh,
// and, when it runs on this machine, its process is alive.
func (d *Driver) Holds(now time.Time, host string) bool {
	ttl := LeaseTTL
	if d != nil && d.TTL > 0 {
		ttl = d.TTL
	}
	if d == nil || now.Sub(d.Renewed) > ttl {
		return false
	}
	if d.Host == host && d.PID > 0 && !alive(d.PID) {
		return false
	}
	return true
}

func (d *Driver) String() string {
	if d.Cluster {
		return fmt.Sprintf("the cluster (pod %s, as %s)", d.Host, d.User)
	}
	return fmt.Sprintf("%s on %s (pid %d)", d.User, d.Host, d.PID)
}

// Duration is a time.Duration that reads and writes as "30s".
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Store reads and writes canary records in a namespace.
type Store struct {
	CS        kubernetes.Interface
	Namespace string
}

// ErrNotFound means no canary was ever started for the Service.
var ErrNotFound = errors.New("no canary")

func configMapName(service string) string { return "tunnel-canary-" + service }

const stateKey = "state.json"

// Get reads the canary of service.
func (s Store) Get(ctx context.Context, service string) (*State, error) {
	cm, err := s.CS.CoreV1().ConfigMaps(s.Namespace).Get(ctx, configMapName(service), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w for service %s in namespace %s", ErrNotFound, service, s.Namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("read the canary of %s: %w", service, err)
	}
	return decode(cm)
}

// List reads every canary in the namespace.
func (s Store) List(ctx context.Context) ([]*State, error) {
	cms, err := s.CS.CoreV1().ConfigMaps(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: Label})
	if err != nil {
		return nil, fmt.Errorf("list canaries in namespace %s: %w", s.Namespace, err)
	}
	var out []*State
	for i := range cms.Items {
		st, err := decode(&cms.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

func decode(cm *corev1.ConfigMap) (*State, error) {
	var st State
	if err := json.Unmarshal([]byte(cm.Data[stateKey]), &st); err != nil {
		return nil, fmt.Errorf("configmap %s/%s does not hold a canary: %w", cm.Namespace, cm.Name, err)
	}
	if err := st.Check(); err != nil {
		return nil, fmt.Errorf("configmap %s/%s does not hold a canary tunnel wrote: %w", cm.Namespace, cm.Name, err)
	}
	return &st, nil
}

// Check refuses a record no canary of tunnel's could have written: anyone
// who may edit ConfigMaps in the namespace can edit it, and a driver acts
// on it (deletes the canary, re-images the stable Deployment).
func (s *State) Check() error {
	if want := s.Spec.Service + "-canary"; s.Canary != want {
		return fmt.Errorf("its canary is %q, not %q", s.Canary, want)
	}
	if len(s.Spec.Steps) == 0 {
		return errors.New("it has no steps")
	}
	if s.Spec.Match != "" {
		if _, err := ParseMatch(s.Spec.Match); err != nil {
			return fmt.Errorf("its match: %w", err)
		}
	}
	for _, c := range s.Spec.Custom {
		if _, err := ParseCheck(c.Name + ": " + c.Expr); err != nil {
			return fmt.Errorf("its check: %w", err)
		}
	}
	prev := 0
	for i, w := range s.Spec.Steps {
		if i == 0 && w == MatchStep && s.Spec.Match != "" {
			continue
		}
		if w <= prev || w > 100 {
			return fmt.Errorf("its steps %v are not ascending percentages", s.Spec.Steps)
		}
		prev = w
	}
	if s.Step < 0 || s.Step >= len(s.Spec.Steps) {
		return fmt.Errorf("its step %d is not one of its %d", s.Step, len(s.Spec.Steps))
	}
	return nil
}

// Create records a new canary; one that is still running is not replaced.
func (s Store) Create(ctx context.Context, st *State) error {
	if err := st.Check(); err != nil {
		return fmt.Errorf("canary of %s: %w", st.Spec.Service, err)
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: configMapName(st.Spec.Service), Namespace: s.Namespace,
			Labels: map[string]string{Label: st.Spec.Service}},
		Data: map[string]string{stateKey: string(data)},
	}
	cms := s.CS.CoreV1().ConfigMaps(s.Namespace)
	_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: FieldManager})
	if apierrors.IsAlreadyExists(err) {
		old, gerr := s.Get(ctx, st.Spec.Service)
		if gerr != nil {
			return gerr
		}
		if !old.Phase.Done() {
			return fmt.Errorf("a canary of %s is already %s with %s (see tunnel canary status %s)", st.Spec.Service,
				strings.ToLower(string(old.Phase)), DescribeSplit(old.Split()), st.Spec.Service)
		}
		return s.Update(ctx, st.Spec.Service, func(cur *State) error {
			if !cur.Phase.Done() {
				return fmt.Errorf("a canary of %s was started meanwhile", st.Spec.Service)
			}
			*cur = *st
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("record the canary of %s: %w", st.Spec.Service, err)
	}
	return nil
}

// Update changes the record with fn, retrying when someone else wrote it
// in between, so requests from other terminals are never lost.
func (s Store) Update(ctx context.Context, service string, fn func(*State) error) error {
	cms := s.CS.CoreV1().ConfigMaps(s.Namespace)
	for {
		cm, err := cms.Get(ctx, configMapName(service), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("%w for service %s in namespace %s", ErrNotFound, service, s.Namespace)
		}
		if err != nil {
			return fmt.Errorf("read the canary of %s: %w", service, err)
		}
		st, err := decode(cm)
		if err != nil {
			return err
		}
		if err := fn(st); err != nil {
			return err
		}
		st.Updated = time.Now().UTC()
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		cm.Data[stateKey] = string(data)
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("record the canary of %s: %w", service, err)
		}
		return nil
	}
}

// Me is this process as a driver.
func Me(user string) *Driver {
	host, _ := os.Hostname()
	return &Driver{User: user, Host: host, PID: os.Getpid()}
}
