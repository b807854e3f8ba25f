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
// twice). Each app container runs `tunnel-agent idle` from the agent
// image instead, with its probes off, and the workload runs one replica;
// its env, volumes, service account and ports stay, so the pod keeps the
// identity the laptop takes with --env-file. What was there is written
// into an annotation and put back from it, field by field, by JSON patches
// that test what they change: another manager's fields cannot be taken
// out by an apply, and an object changed meanwhile is not overwritten.
const (
	ReplacedAnnot  = "tunnel.dev/replaced"
	ReplaceManager = "tunnel-replace"
	idleArg        = "idle"
)

// ErrReplaced means the workload is replaced for another intercept.
var ErrReplaced = errors.New("replaced already")

// replacement is what ReplacedAnnot holds.
type replacement struct {
	Intercept  string              `json:"intercept"` // the intercept it is replaced for
	Holder     string              `json:"holder"`    // user@host
	Replicas   *int64              `json:"replicas,omitempty"`
	Containers []replacedContainer `json:"containers"`
}

type replacedContainer struct {
	Name           string        `json:"name"`
	Image          string        `json:"image"`
	Command        []string      `json:"command,omitempty"`
	Args           []string      `json:"args,omitempty"`
	ReadinessProbe *corev1.Probe `json:"readinessProbe,omitempty"`
	LivenessProbe  *corev1.Probe `json:"livenessProbe,omitempty"`
	StartupProbe   *corev1.Probe `json:"startupProbe,omitempty"`
}

// Replaced says which intercept w is replaced for ("" when it is not).
func Replaced(w *workload.Workload) string {
	var r replacement
	if json.Unmarshal([]byte(w.Object.GetAnnotations()[ReplacedAnnot]), &r) != nil {
		return ""
	}
	return r.Intercept
}

// Replace makes the laptop w's only consumer for intercept (see above),
// and waits for the rollout. Replaced for this intercept already, it does
// nothing; for another, it says so.
func Replace(ctx context.Context, wc workload.Client, w *workload.Workload, agentImage, intercept, holder string, timeout time.Duration, progress Progress) error {
	w, err := wc.Get(ctx, w.Namespace, w.Ref)
	if err != nil {
		return err
	}
	if other := Replaced(w); other == intercept {
		return nil
	} else if other != "" {
		return fmt.Errorf("%w: %s is replaced for intercept %s; its holder's leave puts it back", ErrReplaced, w.Describe(), other)
	}
	ops, err := replaceOps(w, agentImage, intercept, holder)
	if err != nil {
		return err
	}
	progress(fmt.Sprintf("Replacing the containers of %s with the laptop (one rollout)", w.Describe()))
	if err := wc.JSONPatch(ctx, w, ops, ReplaceManager); err != nil {
		return err
	}
	if err := wc.Wait(ctx, w.Namespace, w.Ref, timeout, progress); err != nil {
		undo := context.WithoutCancel(ctx)
		if _, rerr := Restore(undo, wc, w.Namespace, w.Ref, timeout, func(string) {}); rerr != nil {
			return fmt.Errorf("%w (and putting it back failed: %v)", err, rerr)
		}
		return err
	}
	return nil
}

// replaceOps are the JSON patch that replaces w's containers for
// intercept and writes down what they were.
func replaceOps(w *workload.Workload, agentImage, intercept, holder string) ([]map[string]any, error) {
	rep := replacement{Intercept: intercept, Holder: holder}
	ops := versionTest(w)
	for i, c := range w.Template.Spec.Containers {
		if c.Name == Container {
			continue
		}
		rep.Containers = append(rep.Containers, replacedContainer{Name: c.Name, Image: c.Image, Command: c.Command, Args: c.Args,
			ReadinessProbe: c.ReadinessProbe, LivenessProbe: c.LivenessProbe, StartupProbe: c.StartupProbe})
		p := fmt.Sprintf("/spec/template/spec/containers/%d/", i)
		ops = append(ops, test(p+"name", c.Name),
			op("replace", p+"image", agentImage),
			op("add", p+"command", []string{release.AgentPath}),
			op("add", p+"args", []string{idleArg}))
		for name, probe := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
			if probe != nil {
				ops = append(ops, op("remove", p+name, nil))
			}
		}
	}
	if w.Kind != workload.DaemonSet { // one pod per node, whatever it says
		if n, found, _ := unstructured.NestedInt64(w.Object.Object, "spec", "replicas"); found {
			rep.Replicas = &n
		}
		ops = append(ops, op("add", "/spec/replicas", 1))
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return nil, err
	}
	return append(ops, annotationOps(w, string(data))...), nil
}

// Restore puts a replaced workload back as it was, and waits for the
// rollout; it says whether there was anything to put back.
func Restore(ctx context.Context, wc workload.Client, ns string, r workload.Ref, timeout time.Duration, progress Progress) (bool, error) {
	w, err := wc.Get(ctx, ns, r)
	if errors.Is(err, workload.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	raw := w.Object.GetAnnotations()[ReplacedAnnot]
	if raw == "" {
		return false, nil
	}
	ops, err := restoreOps(w, raw)
	if err != nil {
		return false, err
	}
	progress(fmt.Sprintf("Putting %s back as it was (one rollout)", w.Describe()))
	if err := wc.JSONPatch(ctx, w, ops, ReplaceManager); err != nil {
		return false, err
	}
	return true, wc.Wait(ctx, ns, r, timeout, progress)
}

// restoreOps are the JSON patch that puts back what raw (ReplacedAnnot's
// value) says w's containers were.
func restoreOps(w *workload.Workload, raw string) ([]map[string]any, error) {
	var rep replacement
	if err := json.Unmarshal([]byte(raw), &rep); err != nil {
		return nil, fmt.Errorf("%s: annotation %s does not say what to put back: %w", w.Describe(), ReplacedAnnot, err)
	}
	ops := versionTest(w)
	for _, orig := range rep.Containers {
		i := slices.IndexFunc(w.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == orig.Name })
		if i < 0 {
			continue // gone meanwhile: nothing of it to put back
		}
		now := w.Template.Spec.Containers[i]
		p := fmt.Sprintf("/spec/template/spec/containers/%d/", i)
		ops = append(ops, test(p+"name", orig.Name), op("replace", p+"image", orig.Image))
		ops = append(ops, field(p+"command", orig.Command != nil, orig.Command, now.Command != nil)...)
		ops = append(ops, field(p+"args", orig.Args != nil, orig.Args, now.Args != nil)...)
		ops = append(ops, field(p+"readinessProbe", orig.ReadinessProbe != nil, orig.ReadinessProbe, now.ReadinessProbe != nil)...)
		ops = append(ops, field(p+"livenessProbe", orig.LivenessProbe != nil, orig.LivenessProbe, now.LivenessProbe != nil)...)
		ops = append(ops, field(p+"startupProbe", orig.StartupProbe != nil, orig.StartupProbe, now.StartupProbe != nil)...)
	}
	if w.Kind != workload.DaemonSet {
		_, has, _ := unstructured.NestedInt64(w.Object.Object, "spec", "replicas")
		ops = append(ops, field("/spec/replicas", rep.Replicas != nil, rep.Replicas, has)...)
	}
	if len(w.Object.GetAnnotations()) == 1 {
		ops = append(ops, op("remove", "/metadata/annotations", nil))
	} else {
		ops = append(ops, op("remove", "/metadata/annotations/"+escape(ReplacedAnnot), nil))
	}
	return ops, nil
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
