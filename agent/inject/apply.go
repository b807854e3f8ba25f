package inject

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	authzv1 "k8s.io/api/authorization/v1"
	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/workload"
)

// tokenVolume holds the sidecar's token for the manager.
const tokenVolume = rpc.SidecarTokenVolume

// ErrForbidden means the user's own permissions do not allow the change.
var ErrForbidden = access.ErrForbidden

// Progress receives one line per step of a long operation.
type Progress func(string)

// CheckServiceAccess asks the API server whether the user may change the
// Services of ns, which an intercept of any kind needs: before a workload
// named without its kind is looked up.
func CheckServiceAccess(ctx context.Context, cs kubernetes.Interface, ns string) error {
	return access.Check(ctx, cs, ns, "intercepting there needs (the sidecar is added with your own permissions)", access.ServiceRights()...)
}

// CheckAccess asks the API server whether the user may change workloads
// of kind and their Services in ns, before anything is changed; recreates
// says tunnel will replace the workload's pods itself (workload.Recreates),
// which needs the right to delete them.
func CheckAccess(ctx context.Context, cs kubernetes.Interface, ns, kind string, recreates bool) error {
	rights := access.InterceptRights(kind, "")
	if recreates && !slices.ContainsFunc(rights, func(r authzv1.ResourceAttributes) bool { return r.Verb == "delete" }) {
		rights = append(rights, authzv1.ResourceAttributes{Verb: "delete", Resource: "pods"})
	}
	return access.Check(ctx, cs, ns, "intercepting there needs (the sidecar is added with your own permissions)", rights...)
}

// Captures reads the sidecar's captures from a pod template: app port →
// listen port. Empty when it has no sidecar.
func Captures(t *corev1.PodTemplateSpec) map[int32]int32 {
	out := map[int32]int32{}
	for listen, app := range portPairs(t.Spec.Containers, Container, "--capture") {
		out[app] = listen
	}
	return out
}

// Redirects reads which app ports the redirect init container sends to
// the sidecar.
func Redirects(t *corev1.PodTemplateSpec) map[int32]bool {
	out := map[int32]bool{}
	for app := range portPairs(t.Spec.InitContainers, InitContainer, "--port") {
		out[app] = true
	}
	return out
}

// portPairs reads the A=B values of flag in the arguments of container
// name among cs.
func portPairs(cs []corev1.Container, name, flag string) map[int32]int32 {
	out := map[int32]int32{}
	for _, c := range cs {
		if c.Name != name {
			continue
		}
		for i, a := range c.Args {
			if a == flag && i+1 < len(c.Args) {
				x, y, _ := strings.Cut(c.Args[i+1], "=")
				xn, _ := strconv.Atoi(x)
				yn, _ := strconv.Atoi(y)
				out[int32(xn)] = int32(yn)
			}
		}
	}
	return out
}

// Ensure makes p's port captured: the sidecar in the pod template with a
// listener for the app port (one rollout, waited for), then the Service
// ports pointed at that listener. On failure what this call changed is
// undone and the error says why. Otherwise undo (never nil) takes back
// what it changed, for a caller that cannot go on: the sidecar it added,
// or the port it added to one, and the Service ports it pointed.
func Ensure(ctx context.Context, wc workload.Client, p *Plan, agent Agent, timeout time.Duration, progress Progress) (undo func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	w := p.Workload
	caps, redirects := Captures(&w.Template), Redirects(&w.Template)
	listen, ok := caps[p.AppPort]
	if ok && (redirects[p.AppPort] || !p.Redirect) {
		// A sidecar of an older agent is replaced at its next intercept.
		if err := Upgrade(ctx, wc, w, agent, timeout, progress); err != nil {
			return nothing, err
		}
		if redirects[p.AppPort] || p.Service == nil {
			return nothing, nil
		}
		took, err := retarget(ctx, wc.CS, p, listen)
		if err != nil {
			return nothing, err
		}
		return func(ctx context.Context) error { return releaseAll(ctx, wc.CS, took) }, nil
	}
	hadPort, hadRedirect := ok, redirects[p.AppPort]
	if !ok {
		listen = freePort(&w.Template, caps, p.Avoid...)
		caps[p.AppPort] = listen
	}
	if p.Redirect {
		redirects[p.AppPort] = true
	}
	if len(caps) == 1 && !hadPort {
		progress(fmt.Sprintf("Adding the intercept sidecar to %s (one rollout)", w.Describe()))
	} else {
		progress(fmt.Sprintf("Adding port %d to the sidecar of %s (one rollout)", p.AppPort, w.Describe()))
	}
	if err := applySidecar(ctx, wc, w, agent, caps, redirects, p.Avoid...); err != nil {
		return nothing, err
	}
	var took []ServicePort
	err = wc.Wait(ctx, w.Namespace, w.Ref, timeout, progress)
	if err == nil && !p.Redirect && p.Service != nil {
		took, err = retarget(ctx, wc.CS, p, listen)
	}
	// back takes this call's port (or redirect) out of the sidecar as it
	// is now, the whole sidecar when it was its only one: another port
	// added meanwhile stays.
	back := func(ctx context.Context) error {
		now, err := wc.Get(ctx, w.Namespace, w.Ref)
		if err != nil {
			return err
		}
		caps, redirects := Captures(&now.Template), Redirects(&now.Template)
		if caps[p.AppPort] != listen {
			return nil // changed meanwhile: no longer this call's to take
		}
		if !hadPort {
			delete(caps, p.AppPort)
		}
		if !hadRedirect {
			delete(redirects, p.AppPort)
		}
		if len(caps) == 0 {
			progress(fmt.Sprintf("Removing the intercept sidecar from %s again (one rollout)", w.Describe()))
			err = wc.Apply(ctx, now, nil, FieldManager, owned())
		} else {
			progress(fmt.Sprintf("Removing port %d from the sidecar of %s again (one rollout)", p.AppPort, w.Describe()))
			err = applySidecar(ctx, wc, now, agent, caps, redirects)
		}
		if err != nil {
			return err
		}
		err = wc.Wait(ctx, w.Namespace, w.Ref, timeout, progress)
		wc.Unstick(ctx, w.Namespace, w.Ref)
		if len(caps) == 0 {
			_ = wc.Forget(ctx, w.Namespace, w.Ref, FieldManager, func(w *workload.Workload) bool { return HasSidecar(&w.Template) })
		}
		return err
	}
	if err != nil {
		_ = back(context.WithoutCancel(ctx))
		return nothing, err
	}
	return func(ctx context.Context) error {
		if err := releaseAll(ctx, wc.CS, took); err != nil {
			return err
		}
		if len(took) > 0 {
			progress("Waiting for the Services to send their traffic to the app again")
			var names []string
			for _, t := range took {
				names = append(names, t.Service.Name)
			}
			if err := awaitEndpoints(ctx, wc.CS, w.Namespace, slices.Compact(names), map[int32]bool{listen: true}, timeout); err != nil {
				return err
			}
		}
		return back(ctx)
	}, nil
}

// freePort picks the first listen port no container declares, no capture
// uses and avoid does not name.
func freePort(t *corev1.PodTemplateSpec, caps map[int32]int32, avoid ...int32) int32 {
	used := map[int32]bool{MetricsPort: true}
	for _, c := range t.Spec.Containers {
		for _, p := range c.Ports {
			used[p.ContainerPort] = true
		}
	}
	for a, l := range caps {
		used[l], used[a] = true, true
	}
	for _, a := range avoid {
		used[a] = true
	}
	for p := int32(FirstCapture); ; p++ {
		if !used[p] {
			return p
		}
	}
}

// metricsPort is the port of the sidecar's /metrics and /healthz: the one
// its sidecar has, else MetricsPort, or the first free one below it when
// an app's container declares it, an app port captured is it, or avoid
// names it (an app port a Service leads to); never the sidecar's direct
// port. Capture listeners count up from FirstCapture, above it.
func metricsPort(t *corev1.PodTemplateSpec, caps map[int32]int32, avoid ...int32) int32 {
	for _, c := range t.Spec.Containers {
		if c.Name != Container {
			continue
		}
		for i, a := range c.Args {
			if a == "--metrics-addr" && i+1 < len(c.Args) {
				if _, p, ok := strings.Cut(c.Args[i+1], ":"); ok {
					if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
						return int32(n)
					}
				}
			}
		}
	}
	used := map[int32]bool{rpc.SidecarDirectPort: true}
	for _, c := range t.Spec.Containers {
		for _, p := range c.Ports {
			used[p.ContainerPort] = true
		}
	}
	for a := range caps {
		used[a] = true
	}
	for _, a := range avoid {
		used[a] = true
	}
	p := int32(MetricsPort)
	for used[p] {
		p--
	}
	return p
}

// applySidecar server-side applies the sidecar container, with caps, as
// FieldManager: the only fields of the workload that manager owns. avoid
// names app ports its metrics port must not take (metricsPort).
func applySidecar(ctx context.Context, wc workload.Client, w *workload.Workload, agent Agent, caps map[int32]int32, redirects map[int32]bool, avoid ...int32) error {
	ref := w.Ref.String()
	metrics := metricsPort(&w.Template, caps, avoid...)
	args := []string{"sidecar", "--workload", ref, "--manager", managerAddr,
		"--metrics-addr", fmt.Sprintf(":%d", metrics)}
	if agent.ManagerKey != "" {
		args = []string{"sidecar", "--workload", ref, "--manager", managerTLSAddr, "--manager-key", agent.ManagerKey,
			"--metrics-addr", fmt.Sprintf(":%d", metrics)}
	}
	apps := slices.Sorted(maps.Keys(caps))
	ports := []corev1.ContainerPort{{Name: "tunnel-metrics", ContainerPort: metrics}}
	for _, a := range apps {
		args = append(args, "--capture", fmt.Sprintf("%d=%d", caps[a], a))
		ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("tnl-%d", a), ContainerPort: caps[a]})
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	c := corev1.Container{
		Name:            Container,
		Image:           agent.Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            args,
		Env: []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"), fieldEnv("POD_IP", "status.podIP"),
			manifest.MemLimitEnv(Container)},
		Resources: manifest.Resources("10m", "32Mi", cmp.Or(agent.Memory, manifest.DefaultSidecarMemory)),
		Ports:     ports,
		// The pod-bound token that shows the manager this is one of the
		// workload's pods.
		VolumeMounts: []corev1.VolumeMount{{Name: tokenVolume, MountPath: "/var/run/secrets/tunnel.dev", ReadOnly: true}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(metrics)}},
			PeriodSeconds: 2,
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	podSpec := map[string]any{
		"containers": []corev1.Container{c},
		"volumes": []corev1.Volume{{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: rpc.SidecarAudience, ExpirationSeconds: ptr.To(int64(3600)), Path: "token",
			}}},
		}}}},
	}
	if len(redirects) > 0 {
		podSpec["initContainers"] = []corev1.Container{redirectContainer(agent, caps, redirects)}
	}
	// The secrets the agent image is pulled with join the pod's own; the
	// ones it had stay when the sidecar goes (shared ownership).
	if len(agent.PullSecrets) > 0 {
		var refs []corev1.LocalObjectReference
		for _, n := range agent.PullSecrets {
			refs = append(refs, corev1.LocalObjectReference{Name: n})
		}
		podSpec["imagePullSecrets"] = refs
	}
	return wc.Apply(ctx, w, podSpec, FieldManager, owned())
}

// owned names what tunnel adds to a pod template.
func owned() workload.Owned {
	return workload.Owned{Containers: []string{Container, InitContainer}, Volumes: []string{tokenVolume}}
}

// redirectContainer runs `tunnel-agent redirect` before the pod's other
// containers: root with NET_ADMIN alone, for the moment it takes to write
// the pod's nftables rules, then gone.
func redirectContainer(agent Agent, caps map[int32]int32, redirects map[int32]bool) corev1.Container {
	args := []string{"redirect"}
	for _, a := range slices.Sorted(maps.Keys(redirects)) {
		args = append(args, "--port", fmt.Sprintf("%d=%d", a, caps[a]))
	}
	return corev1.Container{
		Name: InitContainer, Image: agent.Image, ImagePullPolicy: corev1.PullIfNotPresent, Args: args,
		Resources: manifest.Resources("10m", "16Mi", "32Mi"),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptr.To(int64(0)), RunAsNonRoot: ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}, Drop: []corev1.Capability{"ALL"}},
		},
	}
}

// Remove takes the sidecar out of a workload: first a replaced workload
// (intercept --replace) is put back, then the Services go back
// to the app's ports, then the sidecar leaves the pod template (one
// rollout, waited for).
func Remove(ctx context.Context, wc workload.Client, ns string, r workload.Ref, timeout time.Duration, progress Progress) error {
	// A workload an intercept replaced (--replace) runs its own
	// containers again first.
	if _, err := Restore(ctx, wc, ns, r, "", "", timeout, progress); err != nil {
		return err
	}
	// The sidecar's listeners, which the Services must no longer name
	// before it goes (unknown when the workload is gone).
	var listeners map[int32]bool
	if w, err := wc.Get(ctx, ns, r); err == nil {
		listeners = map[int32]bool{}
		for _, l := range Captures(&w.Template) {
			listeners[l] = true
		}
	}
	restored, err := restoreServices(ctx, wc.CS, ns, r.String())
	if err != nil {
		return err
	}
	if len(restored) > 0 {
		progress("Waiting for the Services to send their traffic to the app again")
		if err := awaitEndpoints(ctx, wc.CS, ns, restored, listeners, timeout); err != nil {
			return err
		}
	}
	w, err := wc.Get(ctx, ns, r)
	if errors.Is(err, workload.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if HasSidecar(&w.Template) && !workload.IsBatch(w.Kind) { // tunnel never puts one into a Job's pods
		progress(fmt.Sprintf("Removing the intercept sidecar from %s (one rollout)", w.Describe()))
		if err := wc.Apply(ctx, w, nil, FieldManager, owned()); err != nil {
			return err
		}
		if err := wc.Wait(ctx, ns, r, timeout, progress); err != nil {
			return err
		}
	}
	// What tunnel put back is its owner's again (workload.ForgetOps): a
	// kind changed by update leaves tunnel's entry owning its lists, and a
	// replace put back leaves one owning the containers' fields.
	_ = wc.Forget(ctx, ns, r, FieldManager, func(w *workload.Workload) bool { return HasSidecar(&w.Template) })
	_ = wc.Forget(ctx, ns, r, ReplaceManager, replacedNow)
	return nil
}

// HasSidecar says whether a pod template carries the sidecar.
func HasSidecar(t *corev1.PodTemplateSpec) bool {
	return slices.ContainsFunc(t.Spec.Containers, func(c corev1.Container) bool { return c.Name == Container })
}

// WithSidecar lists the workloads in ns (all namespaces when "") that
// carry the sidecar.
func WithSidecar(ctx context.Context, wc workload.Client, ns string) ([]*workload.Workload, error) {
	list, err := wc.List(ctx, ns)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(list, func(w *workload.Workload) bool { return !HasSidecar(&w.Template) }), nil
}

// Agent is the sidecar's image (the manager's, by digest) and the secrets
// nodes pull it with, which must exist in the workload's namespace.
type Agent struct {
	Image       string
	PullSecrets []string
	Memory      string // the sidecar's memory limit; "" for manifest.DefaultSidecarMemory
	ManagerKey  string // the pin of the manager's key (manifest.KeyPinAnnotation); "" for none
	// PreviewDomain is the install's domain for preview URLs ("" for none).
	PreviewDomain string
}
