// Package workload reads the workloads tunnel intercepts, whatever their
// kind: Deployments, StatefulSets, DaemonSets, ReplicaSets of their own and
// Argo Rollouts (through the dynamic client, so a cluster without Argo
// needs nothing of it). Everything tunnel does to a workload goes through
// its pod template, which every kind has in the same place.
package workload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The kinds' names, as the API spells them.
const (
	Deployment  = "Deployment"
	StatefulSet = "StatefulSet"
	DaemonSet   = "DaemonSet"
	ReplicaSet  = "ReplicaSet"
	Rollout     = "Rollout"
	Job         = "Job"
	CronJob     = "CronJob"
)

// Sentinel errors a CLI turns into its sentence.
var (
	ErrNotFound  = errors.New("no such workload")
	ErrAmbiguous = errors.New("several workloads")
	ErrNoPodsFor = errors.New("no workload")
	// ErrNotOwned: a pod is not the workload's (PodTemplate), for good.
	ErrNotOwned = errors.New("not the workload's")
)

// Kind is one kind of workload tunnel can intercept.
type Kind struct {
	Name     string // as the API spells it: "StatefulSet"
	Resource schema.GroupVersionResource
	Short    string   // kubectl's short name ("" for none)
	Template []string // where its pod template is; nil for spec.template
	// Batch: its pods run to completion, a run at a time, and take no
	// traffic tunnel can intercept; a replace suspends it instead (no new
	// pods start) while the laptop does its work.
	Batch bool
}

// APIVersion is the kind's group/version, as objects carry it.
func (k Kind) APIVersion() string { return k.Resource.GroupVersion().String() }

// Kinds lists the kinds tunnel intercepts, in the order a bare name is
// looked up.
func Kinds() []Kind {
	apps := func(r string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: r}
	}
	return []Kind{
		{Name: Deployment, Resource: apps("deployments"), Short: "deploy"},
		{Name: StatefulSet, Resource: apps("statefulsets"), Short: "sts"},
		{Name: DaemonSet, Resource: apps("daemonsets"), Short: "ds"},
		{Name: ReplicaSet, Resource: apps("replicasets"), Short: "rs"},
		{Name: Rollout, Resource: schema.GroupVersionResource{Group: "argoproj.io", Version: "v1alpha1", Resource: "rollouts"}, Short: "ro"},
	}
}

// BatchKinds lists the kinds whose pods run to completion: a Job, and a
// CronJob, whose template is its Jobs'. tunnel replaces them (--replace
// suspends them) but does not intercept their pods.
func BatchKinds() []Kind {
	batch := func(r string) schema.GroupVersionResource {
		return schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: r}
	}
	return []Kind{
		{Name: Job, Resource: batch("jobs"), Batch: true},
		{Name: CronJob, Resource: batch("cronjobs"), Short: "cj", Template: []string{"spec", "jobTemplate", "spec", "template"}, Batch: true},
	}
}

// IsBatch says whether a kind's name (Kind.Name) is one of BatchKinds.
func IsBatch(kind string) bool {
	k, ok := KindNamed(kind)
	return ok && k.Batch
}

// KindNamed finds a kind by any name kubectl knows it by: "statefulset",
// "statefulsets", "sts", "StatefulSet", "statefulsets.apps".
func KindNamed(s string) (Kind, bool) {
	s = strings.ToLower(s)
	for _, k := range slices.Concat(Kinds(), BatchKinds()) {
		r := k.Resource.Resource
		if s == strings.ToLower(k.Name) || s == r || (k.Short != "" && s == k.Short) || s == r+"."+k.Resource.Group {
			return k, true
		}
	}
	return Kind{}, false
}

// Ref names a workload within a namespace.
type Ref struct {
	Kind string // Kind.Name
	Name string
}

// String is the form intercepts, sidecars and annotations carry: a
// Deployment's bare name (as before tunnel knew other kinds, so that
// sidecars and intercepts of older versions still match), KIND/NAME for
// the others, the kind in lower case.
func (r Ref) String() string {
	if r.Kind == Deployment || r.Kind == "" {
		return r.Name
	}
	return strings.ToLower(r.Kind) + "/" + r.Name
}

// Describe names the workload in a sentence: "statefulset shop/web".
func (r Ref) Describe(ns string) string {
	return strings.ToLower(r.Kind) + " " + ns + "/" + r.Name
}

// ParseRef reads Ref.String's form (and KIND/NAME for a Deployment).
func ParseRef(s string) (Ref, error) {
	kind, name, ok := strings.Cut(s, "/")
	if !ok {
		return Ref{Kind: Deployment, Name: s}, nil
	}
	k, known := KindNamed(kind)
	if !known {
		return Ref{}, fmt.Errorf("%q is not a workload kind tunnel intercepts (%s)", kind, kindList())
	}
	if name == "" || strings.Contains(name, "/") {
		return Ref{}, fmt.Errorf("%q is not KIND/NAME", s)
	}
	return Ref{Kind: k.Name, Name: name}, nil
}

func kindList() string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, strings.ToLower(k.Name))
	}
	return strings.Join(out, ", ") + "; and, to replace with --replace, job and cronjob"
}

// Workload is one workload as read from the cluster.
type Workload struct {
	Ref
	Namespace  string
	UID        types.UID
	Generation int64
	Template   corev1.PodTemplateSpec
	Selector   *metav1.LabelSelector
	Object     *unstructured.Unstructured // as read
}

// Describe names the workload in a sentence.
func (w *Workload) Describe() string { return w.Ref.Describe(w.Namespace) }

// Client reads and changes workloads of every kind.
type Client struct {
	CS  kubernetes.Interface
	Dyn dynamic.Interface // for Rollouts; nil sees none
}

// ForConfig makes a Client beside an existing clientset.
func ForConfig(rc *rest.Config, cs kubernetes.Interface) (Client, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return Client{}, err
	}
	return Client{CS: cs, Dyn: dyn}, nil
}

// Get reads one workload.
func (c Client) Get(ctx context.Context, ns string, r Ref) (*Workload, error) {
	k, ok := KindNamed(r.Kind)
	if !ok {
		return nil, fmt.Errorf("%q is not a workload kind tunnel intercepts (%s)", r.Kind, kindList())
	}
	u, err := c.get(ctx, k, ns, r.Name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: there is no %s %q in namespace %s", ErrNotFound, k.Name, r.Name, ns)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Describe(ns), err)
	}
	return fromObject(k, u)
}

// fromObject reads the parts of a workload every kind shares.
func fromObject(k Kind, u *unstructured.Unstructured) (*Workload, error) {
	w := &Workload{Ref: Ref{Kind: k.Name, Name: u.GetName()}, Namespace: u.GetNamespace(), UID: u.GetUID(),
		Generation: u.GetGeneration(), Object: u}
	path := k.Template
	if path == nil {
		path = []string{"spec", "template"}
	}
	tmpl, found, err := unstructured.NestedMap(u.Object, path...)
	if err != nil || !found {
		if ref, ok, _ := unstructured.NestedString(u.Object, "spec", "workloadRef", "name"); ok {
			return nil, fmt.Errorf("%s takes its pod template from Deployment %s (workloadRef): intercept that Deployment's pods through it, or give the Rollout a template of its own", w.Describe(), ref)
		}
		return nil, fmt.Errorf("%s has no pod template", w.Describe())
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &w.Template); err != nil {
		return nil, fmt.Errorf("read the pod template of %s: %w", w.Describe(), err)
	}
	if sel, found, _ := unstructured.NestedMap(u.Object, "spec", "selector"); found {
		w.Selector = &metav1.LabelSelector{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(sel, w.Selector); err != nil {
			return nil, fmt.Errorf("read the selector of %s: %w", w.Describe(), err)
		}
	}
	return w, nil
}

// List reads the workloads of every kind in ns ("" for all namespaces),
// leaving out ReplicaSets another workload runs. A kind the cluster does
// not have (no Argo) or the user may not list is skipped.
func (c Client) List(ctx context.Context, ns string) ([]*Workload, error) {
	var out []*Workload
	for _, k := range Kinds() {
		items, err := c.list(ctx, k, ns)
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) { // no such kind here, or not the user's to see
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", k.Resource.Resource, err)
		}
		for i := range items {
			if k.Name == ReplicaSet && metav1.GetControllerOf(&items[i]) != nil {
				continue
			}
			w, err := fromObject(k, &items[i])
			if err != nil {
				continue // a Rollout by workloadRef: not one tunnel changes
			}
			out = append(out, w)
		}
	}
	return out, nil
}

// ListBatch reads the Jobs and CronJobs in ns ("" for all namespaces)
// whose annotations have key; kinds the user may not list are skipped.
func (c Client) ListBatch(ctx context.Context, ns, key string) ([]*Workload, error) {
	var out []*Workload
	for _, k := range BatchKinds() {
		items, err := c.list(ctx, k, ns)
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", k.Resource.Resource, err)
		}
		for i := range items {
			if _, ok := items[i].GetAnnotations()[key]; !ok {
				continue
			}
			if w, err := fromObject(k, &items[i]); err == nil {
				out = append(out, w)
			}
		}
	}
	return out, nil
}

// Find resolves what a user names: KIND/NAME; or NAME, a workload of any
// kind (a ReplicaSet only when no other workload runs it); or, when no
// workload has that name, a Service's name, for the one workload whose
// pods it selects. service is that Service's name when it was one.
func (c Client) Find(ctx context.Context, ns, name string) (w *Workload, service string, err error) {
	if strings.Contains(name, "/") {
		r, err := ParseRef(name)
		if err != nil {
			return nil, "", err
		}
		w, err := c.Get(ctx, ns, r)
		if err != nil {
			return nil, "", err
		}
		return w, "", c.notRunByAnother(w)
	}
	var found []*Workload
	var forbidden []string
	for _, k := range Kinds() {
		w, err := c.Get(ctx, ns, Ref{Kind: k.Name, Name: name})
		switch {
		case errors.Is(err, ErrNotFound): // a kind the cluster lacks says so too
			continue
		case apierrors.IsForbidden(err):
			forbidden = append(forbidden, k.Resource.Resource)
			continue
		case err != nil:
			return nil, "", err
		}
		if k.Name == ReplicaSet && metav1.GetControllerOf(w.Object) != nil {
			continue
		}
		found = append(found, w)
	}
	switch {
	case len(found) == 1:
		return found[0], "", nil
	case len(found) > 1:
		var refs []string
		for _, w := range found {
			refs = append(refs, strings.ToLower(w.Kind)+"/"+w.Name)
		}
		return nil, "", fmt.Errorf("%w: %s are all named %s in namespace %s; say which, as %s", ErrAmbiguous, strings.Join(refs, ", "), name, ns, refs[0])
	}
	svc, err := c.CS.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			// Last, a Job or CronJob of that name: never in the way of a
			// workload or Service a user had in mind.
			for _, k := range BatchKinds() {
				if w, err := c.Get(ctx, ns, Ref{Kind: k.Name, Name: name}); err == nil {
					return w, "", nil
				}
			}
			if len(forbidden) > 0 {
				return nil, "", fmt.Errorf("%w: there is no workload or Service named %q in namespace %s that you may read (you may not get %s there)", ErrNotFound, name, ns, strings.Join(forbidden, ", "))
			}
			return nil, "", fmt.Errorf("%w: there is no workload or Service named %q in namespace %s", ErrNotFound, name, ns)
		}
		return nil, "", fmt.Errorf("read service %s/%s: %w", ns, name, err)
	}
	ws, err := c.BehindService(ctx, svc)
	if err != nil {
		return nil, "", err
	}
	return ws, svc.Name, nil
}

// notRunByAnother refuses a ReplicaSet that a Deployment or Rollout runs:
// a change to it would be undone by its owner at once.
func (c Client) notRunByAnother(w *Workload) error {
	if w.Kind == Job { // its CronJob does not undo a suspend
		return nil
	}
	if owner := metav1.GetControllerOf(w.Object); owner != nil {
		return fmt.Errorf("%s is run by %s %s, which would undo any change to it; intercept %s/%s", w.Describe(), strings.ToLower(owner.Kind), owner.Name, strings.ToLower(owner.Kind), owner.Name)
	}
	return nil
}

// BehindService finds the one workload whose pod template the Service's
// selector picks: the workload whose pods it sends traffic to, even when
// none runs now. No selector, no such workload, or several, is said in one
// sentence that names them.
func (c Client) BehindService(ctx context.Context, svc *corev1.Service) (*Workload, error) {
	if len(svc.Spec.Selector) == 0 {
		return nil, fmt.Errorf("%w: Service %s/%s has no selector (its endpoints are set by hand), so no workload's pods are behind it; name the workload instead", ErrNoPodsFor, svc.Namespace, svc.Name)
	}
	all, err := c.List(ctx, svc.Namespace)
	if err != nil {
		return nil, err
	}
	all = slices.DeleteFunc(all, func(w *Workload) bool { return !Selects(svc, w) })
	switch len(all) {
	case 1:
		return all[0], nil
	case 0:
		if jobs := c.jobsBehind(ctx, svc); len(jobs) > 0 {
			return nil, fmt.Errorf("%w: Service %s/%s selects the pods of %s, and tunnel intercepts those of Deployments, StatefulSets, DaemonSets, ReplicaSets and Rollouts, not of Jobs: their pods run to completion, and a sidecar would keep them running; `tunnel intercept %s --replace` suspends it so that this machine does its work", ErrNoPodsFor, svc.Namespace, svc.Name, strings.Join(jobs, ", "), jobs[0])
		}
		return nil, fmt.Errorf("%w: the selector of Service %s/%s picks the pods of no Deployment, StatefulSet, DaemonSet, ReplicaSet or Rollout", ErrNoPodsFor, svc.Namespace, svc.Name)
	}
	var refs []string
	for _, w := range all {
		refs = append(refs, strings.ToLower(w.Kind)+"/"+w.Name)
	}
	return nil, fmt.Errorf("%w: Service %s/%s selects the pods of %s; name the one to intercept", ErrAmbiguous, svc.Namespace, svc.Name, strings.Join(refs, ", "))
}

// jobsBehind names the CronJobs and Jobs of their own whose pod templates
// the Service's selector picks, so that a refusal can say whose pods they
// are. Best effort: a user who may not list them gets none.
func (c Client) jobsBehind(ctx context.Context, svc *corev1.Service) []string {
	picks := func(labels map[string]string) bool {
		for k, v := range svc.Spec.Selector {
			if labels[k] != v {
				return false
			}
		}
		return true
	}
	var out []string
	if crons, err := c.CS.BatchV1().CronJobs(svc.Namespace).List(ctx, metav1.ListOptions{}); err == nil {
		for _, cj := range crons.Items {
			if picks(cj.Spec.JobTemplate.Spec.Template.Labels) {
				out = append(out, "cronjob/"+cj.Name)
			}
		}
	}
	if jobs, err := c.CS.BatchV1().Jobs(svc.Namespace).List(ctx, metav1.ListOptions{}); err == nil {
		for _, j := range jobs.Items {
			if metav1.GetControllerOf(&j) == nil && picks(j.Spec.Template.Labels) { // a CronJob's are named by it
				out = append(out, "job/"+j.Name)
			}
		}
	}
	return out
}

// Selects says whether a Service's selector picks pods of w's template.
func Selects(svc *corev1.Service, w *Workload) bool {
	if len(svc.Spec.Selector) == 0 {
		return false
	}
	ignore := w.AddedLabels()
	for k, v := range svc.Spec.Selector {
		if !slices.Contains(ignore, k) && w.Template.Labels[k] != v {
			return false
		}
	}
	return true
}

// AddedLabels are the labels w's controller adds to its pods beyond the
// template's, and to the Services it manages: Argo's template hash, in a
// blue-green Rollout's active and preview Services and a canary's.
func (w *Workload) AddedLabels() []string {
	if w.Kind == Rollout {
		return []string{rolloutTemplateHash}
	}
	return nil
}
