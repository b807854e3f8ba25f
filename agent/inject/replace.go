package inject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"tunnel.dev/tunnel/release"
	"tunnel.dev/tunnel/workload"
)

// Replace mode: the workload's own containers stop running their process,
// so the laptop is its only consumer (a queue worker that must not run
// twice). Each app container runs `tunnel-agent idle` from the sidecar's
// image instead, its probes and lifecycle hooks off, and a Deployment,
// ReplicaSet or Rollout runs one replica (a StatefulSet keeps its pods,
// whose ordinals may own volumes; a DaemonSet runs one per node); env,
// volumes, service account and ports stay, so the pod keeps the identity
// the laptop takes with --env-file. What was there is written into an
// annotation and put back from it, field by field, by JSON patches: an
// apply cannot take another manager's fields back, a field someone changed
// since (a new image deployed, a scale) is left as they made it, and a
// patch of an object that moved under it fails whole and is tried again.
//
// A Job or CronJob (workload.BatchKinds) is suspended instead: its pods
// run to completion and no sidecar goes into them. A suspended Job's pods
// are stopped (the Job controller deletes them) and start again when it
// resumes; a suspended CronJob starts no new Job, while one it started
// already runs to its end.
const (
	ReplacedAnnot  = "tunnel.dev/replaced"
	ReplaceManager = "tunnel-replace"
	idleArg        = "idle"
)

// ErrReplaced means the workload is replaced for another intercept, or
// says so without being it.
var ErrReplaced = errors.New("replaced already")

// replacement is what ReplacedAnnot holds.
type replacement struct {
	Intercept  string              `json:"intercept"` // the intercept it is replaced for
	Holder     string              `json:"holder"`    // user@host
	Image      string              `json:"image"`     // what the containers run instead
	Replicas   *int64              `json:"replicas,omitempty"`
	Scaled     bool                `json:"scaled,omitempty"` // replicas set to 1
	Containers []replacedContainer `json:"containers"`
	// Suspended: a Job or CronJob this replace suspended; Suspend is its
	// spec.suspend before (nil when unset).
	Suspended bool  `json:"suspended,omitempty"`
	Suspend   *bool `json:"suspend,omitempty"`
}

type replacedContainer struct {
	Name           string            `json:"name"`
	Image          string            `json:"image"`
	Command        []string          `json:"command,omitempty"`
	Args           []string          `json:"args,omitempty"`
	ReadinessProbe *corev1.Probe     `json:"readinessProbe,omitempty"`
	LivenessProbe  *corev1.Probe     `json:"livenessProbe,omitempty"`
	StartupProbe   *corev1.Probe     `json:"startupProbe,omitempty"`
	Lifecycle      *corev1.Lifecycle `json:"lifecycle,omitempty"`
}

func readReplacement(w *workload.Workload) (*replacement, error) {
	raw, ok := w.Object.GetAnnotations()[ReplacedAnnot]
	if !ok {
		return nil, nil
	}
	var r replacement
	if err := json.Unmarshal([]byte(raw), &r); err != nil || (r.Image == "" && !r.Suspended) || r.Suspended != workload.IsBatch(w.Kind) {
		return nil, fmt.Errorf("%s: annotation %s does not say what to put back", w.Describe(), ReplacedAnnot)
	}
	return &r, nil
}

// Replaced says which intercept w is replaced for ("" when it is not).
func Replaced(w *workload.Workload) string {
	if r, _ := readReplacement(w); r != nil && idle(w, r) {
		return r.Intercept
	}
	return ""
}

// idle says whether w's containers run what r put there (a Job or
// CronJob: whether it is suspended).
func idle(w *workload.Workload, r *replacement) bool {
	if r.Suspended {
		return suspended(w)
	}
	for _, orig := range r.Containers {
		i := slices.IndexFunc(w.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == orig.Name })
		if i < 0 || !isStandIn(w.Template.Spec.Containers[i], r.Image) {
			return false
		}
	}
	return len(r.Containers) > 0
}

// suspended says whether a Job or CronJob is suspended now.
func suspended(w *workload.Workload) bool {
	s, _, _ := unstructured.NestedBool(w.Object.Object, "spec", "suspend")
	return s
}

func isStandIn(c corev1.Container, image string) bool {
	return c.Image == image && slices.Equal(c.Command, []string{release.AgentPath}) && slices.Equal(c.Args, []string{idleArg})
}

// Replace makes the laptop w's only consumer for intercept (see above),
// running image (the sidecar's) in place of its containers, and waits for
// the rollout. changed says whether w is left replaced or half so: on an
// error with changed false, nothing of it changed.
func Replace(ctx context.Context, wc workload.Client, w *workload.Workload, image, intercept, holder string, timeout time.Duration, progress Progress) (changed bool, err error) {
	w, err = wc.Get(ctx, w.Namespace, w.Ref)
	if err != nil {
		return false, err
	}
	switch r, err := readReplacement(w); {
	case err != nil:
		return false, fmt.Errorf("%w: %v; remove the annotation if nothing is replaced", ErrReplaced, err)
	case r != nil && r.Intercept == intercept && r.Holder == holder && idle(w, r):
		return true, nil // replaced for this intercept already
	case r != nil:
		return false, fmt.Errorf("%w: %s is marked replaced for intercept %s of %s; its leave (or `tunnel uninstall --agent %s`) puts it back", ErrReplaced, w.Describe(), r.Intercept, r.Holder, w.Ref)
	}
	if workload.IsBatch(w.Kind) {
		progress(fmt.Sprintf("Suspending %s, so that it starts no pods while the laptop does its work", w.Describe()))
	} else {
		progress(fmt.Sprintf("Replacing the containers of %s with the laptop (one rollout)", w.Describe()))
	}
	err = retryPatch(ctx, wc, w, func(w *workload.Workload) ([]map[string]any, error) {
		if r, _ := readReplacement(w); r != nil {
			return nil, nil // done: the patch went through, its answer lost
		}
		return replaceOps(w, image, intercept, holder)
	})
	if err != nil {
		return false, err
	}
	if err := wc.Wait(ctx, w.Namespace, w.Ref, timeout, progress); err != nil {
		undo := context.WithoutCancel(ctx)
		if _, rerr := Restore(undo, wc, w.Namespace, w.Ref, intercept, holder, timeout, func(string) {}); rerr != nil {
			return true, fmt.Errorf("%w (and putting it back failed: %v)", err, rerr)
		}
		wc.Unstick(undo, w.Namespace, w.Ref)
		return false, err
	}
	return true, nil
}

// scales says whether replace sets w's replicas to one: not a DaemonSet's
// (one pod per node, whatever it says), nor a StatefulSet's, whose higher
// ordinals may own volumes a scale down deletes.
func scales(w *workload.Workload) bool {
	return w.Kind != workload.DaemonSet && w.Kind != workload.StatefulSet
}

// replaceOps are the JSON patch that replaces w's containers for
// intercept and writes down what they were.
func replaceOps(w *workload.Workload, image, intercept, holder string) ([]map[string]any, error) {
	rep := replacement{Intercept: intercept, Holder: holder, Image: image}
	ops := versionTest(w)
	if workload.IsBatch(w.Kind) {
		rep.Image, rep.Suspended = "", true
		if v, found, _ := unstructured.NestedBool(w.Object.Object, "spec", "suspend"); found {
			rep.Suspend = &v
		}
		ops = append(ops, op("add", "/spec/suspend", true))
		data, err := json.Marshal(rep)
		if err != nil {
			return nil, err
		}
		return append(ops, annotationOps(w, string(data))...), nil
	}
	for i, c := range w.Template.Spec.Containers {
		if c.Name == Container {
			continue
		}
		rep.Containers = append(rep.Containers, replacedContainer{Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args,
			ReadinessProbe: c.ReadinessProbe, LivenessProbe: c.LivenessProbe, StartupProbe: c.StartupProbe, Lifecycle: c.Lifecycle})
		p := fmt.Sprintf("/spec/template/spec/containers/%d/", i)
		ops = append(ops, test(p+"name", c.Name),
			op("replace", p+"image", image),
			op("add", p+"command", []string{release.AgentPath}),
			op("add", p+"args", []string{idleArg}))
		// Probes of a process that does not run, and hooks that would
		// run the app's own binary, which the agent's image lacks.
		for name, set := range map[string]bool{"readinessProbe": c.ReadinessProbe != nil, "livenessProbe": c.LivenessProbe != nil,
			"startupProbe": c.StartupProbe != nil, "lifecycle": c.Lifecycle != nil} {
			if set {
				ops = append(ops, op("remove", p+name, nil))
			}
		}
	}
	if scales(w) {
		if n, found, _ := unstructured.NestedInt64(w.Object.Object, "spec", "replicas"); found {
			rep.Replicas = &n
		}
		rep.Scaled = true
		ops = append(ops, op("add", "/spec/replicas", 1))
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return nil, err
	}
	return append(ops, annotationOps(w, string(data))...), nil
}

// Restore puts a workload replaced for intercept by holder back as it was
// ("" for either: whoever replaced it, as uninstall does), and waits for
// the rollout; it says whether it put anything back. A workload replaced
// for another intercept is left alone; an annotation that does not say
// what to put back is reported by progress and left.
func Restore(ctx context.Context, wc workload.Client, ns string, r workload.Ref, intercept, holder string, timeout time.Duration, progress Progress) (bool, error) {
	w, err := wc.Get(ctx, ns, r)
	if errors.Is(err, workload.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rep, err := readReplacement(w)
	if err != nil {
		progress("Warning: " + err.Error() + "; left as it is")
		return false, nil
	}
	if rep == nil || (intercept != "" && rep.Intercept != intercept) || (holder != "" && rep.Holder != holder) {
		return false, nil
	}
	if rep.Suspended {
		progress(fmt.Sprintf("Putting %s back as it was (resuming it)", w.Describe()))
	} else {
		progress(fmt.Sprintf("Putting %s back as it was (one rollout)", w.Describe()))
	}
	var kept []string
	err = retryPatch(ctx, wc, w, func(w *workload.Workload) ([]map[string]any, error) {
		rep, err := readReplacement(w)
		if err != nil || rep == nil {
			return nil, err // put back already
		}
		var ops []map[string]any
		ops, kept = restoreOps(w, rep)
		return ops, nil
	})
	if err != nil {
		return false, err
	}
	for _, k := range kept {
		progress(fmt.Sprintf("Left %s of %s as it is now: it changed since the replace", k, w.Describe()))
	}
	err = wc.Wait(ctx, ns, r, timeout, progress)
	// What it put back is its owner's to apply again (workload.ForgetOps).
	if ferr := wc.Forget(ctx, ns, r, ReplaceManager, replacedNow); ferr != nil {
		progress(fmt.Sprintf("Warning: %s is back, but %s still owns its fields: %v", w.Describe(), ReplaceManager, ferr))
	}
	return true, err
}

// replacedNow says whether w is marked replaced (again).
func replacedNow(w *workload.Workload) bool {
	r, err := readReplacement(w)
	return r != nil || err != nil
}

// restoreOps are the JSON patch that puts back what rep says w's
// containers were, where they still run the stand-in; kept names what
// changed since, which stays as it is.
func restoreOps(w *workload.Workload, rep *replacement) (ops []map[string]any, kept []string) {
	ops = versionTest(w)
	if rep.Suspended {
		// Resumed only if still suspended: one its owner resumed or
		// suspended on purpose since stays so.
		now, has, _ := unstructured.NestedBool(w.Object.Object, "spec", "suspend")
		switch {
		case !now:
			kept = append(kept, "spec.suspend")
		case rep.Suspend == nil || *rep.Suspend != now:
			ops = append(ops, field("/spec/suspend", rep.Suspend != nil, rep.Suspend, has)...)
		}
	}
	for _, orig := range rep.Containers {
		i := slices.IndexFunc(w.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == orig.Name })
		if i < 0 {
			continue // gone meanwhile: nothing of it to put back
		}
		now := w.Template.Spec.Containers[i]
		if !isStandIn(now, rep.Image) {
			kept = append(kept, "container "+orig.Name)
			continue
		}
		p := fmt.Sprintf("/spec/template/spec/containers/%d/", i)
		ops = append(ops, test(p+"name", orig.Name), op("replace", p+"image", orig.Image))
		ops = append(ops, field(p+"command", orig.Command != nil, orig.Command, true)...)
		ops = append(ops, field(p+"args", orig.Args != nil, orig.Args, true)...)
		ops = append(ops, field(p+"readinessProbe", orig.ReadinessProbe != nil, orig.ReadinessProbe, now.ReadinessProbe != nil)...)
		ops = append(ops, field(p+"livenessProbe", orig.LivenessProbe != nil, orig.LivenessProbe, now.LivenessProbe != nil)...)
		ops = append(ops, field(p+"startupProbe", orig.StartupProbe != nil, orig.StartupProbe, now.StartupProbe != nil)...)
		ops = append(ops, field(p+"lifecycle", orig.Lifecycle != nil, orig.Lifecycle, now.Lifecycle != nil)...)
	}
	if rep.Scaled {
		n, has, _ := unstructured.NestedInt64(w.Object.Object, "spec", "replicas")
		if has && n == 1 {
			ops = append(ops, field("/spec/replicas", rep.Replicas != nil, rep.Replicas, has)...)
		} else {
			kept = append(kept, "its replicas")
		}
	}
	if len(w.Object.GetAnnotations()) == 1 {
		ops = append(ops, op("remove", "/metadata/annotations", nil))
	} else {
		ops = append(ops, op("remove", "/metadata/annotations/"+escape(ReplacedAnnot), nil))
	}
	return ops, kept
}

// retryPatch sends the JSON patch build makes of the workload as read,
// reading it again and again when it moved between the read and the
// patch (a controller's status write does): the patch tests its version.
// build returning no operations means there is nothing left to do.
func retryPatch(ctx context.Context, wc workload.Client, w *workload.Workload, build func(*workload.Workload) ([]map[string]any, error)) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			if w, err = wc.Get(ctx, w.Namespace, w.Ref); err != nil {
				return err
			}
		}
		var ops []map[string]any
		if ops, err = build(w); err != nil || len(ops) == 0 {
			return err
		}
		if err = wc.JSONPatch(ctx, w, ops, ReplaceManager); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	return err
}

// versionTest makes a patch fail whole when the object changed since w was
// read.
func versionTest(w *workload.Workload) []map[string]any {
	if rv := w.Object.GetResourceVersion(); rv != "" {
		return []map[string]any{test("/metadata/resourceVersion", rv)}
	}
	return nil
}

// annotationOps sets ReplacedAnnot to value, making the map if need be.
func annotationOps(w *workload.Workload, value string) []map[string]any {
	if len(w.Object.GetAnnotations()) == 0 {
		return []map[string]any{op("add", "/metadata/annotations", map[string]string{ReplacedAnnot: value})}
	}
	return []map[string]any{op("add", "/metadata/annotations/"+escape(ReplacedAnnot), value)}
}

// field puts a field back: its value when it had one, else away if it is
// there now.
func field(path string, had bool, value any, has bool) []map[string]any {
	switch {
	case had:
		return []map[string]any{op("add", path, value)}
	case has:
		return []map[string]any{op("remove", path, nil)}
	}
	return nil
}

func op(kind, path string, value any) map[string]any {
	o := map[string]any{"op": kind, "path": path}
	if kind != "remove" {
		o["value"] = value
	}
	return o
}

func test(path string, value any) map[string]any { return op("test", path, value) }

// escape writes a key into a JSON pointer (RFC 6901).
func escape(key string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
}
