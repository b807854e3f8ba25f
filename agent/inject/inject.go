// Package inject puts the intercept sidecar into a workload and takes it out
// again, with the credentials of the user who asks (so what a user may
// intercept is what their own Kubernetes permissions allow).
//
// The sidecar is one container added to the workload's pod template by
// server-side apply under its own field manager; taking it out is applying
// nothing under that manager, which removes exactly the fields it added and
// leaves the user's spec (annotations included) as it was. Capturing a port
// points the Service's targetPort at the sidecar's listener for that port,
// the old value kept in an annotation of the Service and put back on
// uninstall. Traffic the sidecar is not told to take goes on to the app's
// port, so the workload keeps serving throughout.
package inject

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"tunnel.dev/tunnel/rollout"
	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/workload"
)

// Names tunnel uses in the workloads it changes.
const (
	Container     = rpc.SidecarContainer        // the sidecar's container
	InitContainer = "tunnel-redirect"           // redirects captured ports to the sidecar (Plan.Redirect)
	FieldManager  = "tunnel-intercept"          // owns the sidecar in the workload
	CapturedAnnot = "tunnel.dev/captured-ports" // on a Service: "PORT/PROTO=ORIGINAL-TARGET,..."
	WorkloadAnnot = "tunnel.dev/captured-for"   // on a Service: the workload its captures serve (workload.Ref's form)
	MetricsPort   = 18099                       // the sidecar's /metrics and /healthz, unless an app's (metricsPort)
	FirstCapture  = 18100                       // capture listeners count up from here
	managerAddr   = "tunnel-manager.tunnel-system:8022"
	// managerTLSAddr is the manager's sidecar port, with its key.
	managerTLSAddr = "tunnel-manager.tunnel-system:8023"
)

// Sentinel errors a CLI turns into its sentence.
var (
	ErrNoWorkload  = workload.ErrNotFound
	ErrPartial     = errors.New("not every pod")
	ErrPodSecurity = errors.New("pod security")
	ErrNoService   = errors.New("no service")
	ErrNoPort      = errors.New("no such port")
	ErrWhichPort   = errors.New("several ports")
	ErrHostNetwork = errors.New("host network")
	ErrShared      = errors.New("shared service")
	ErrBatch       = errors.New("runs to completion")
)

// Target is what a user names: a workload (NAME, KIND/NAME, or the name of
// the Service in front of it), and optionally which Service and which of
// its ports ("" when there is only one).
type Target struct {
	Namespace string
	Workload  string
	Service   string
	Port      string // the Service port's name or number
	// Replace: the laptop takes the workload's place, so a workload no
	// Service selects (a queue worker) is taken too, by a port of its
	// containers.
	Replace bool
}

// Plan is a Target resolved against the cluster.
type Plan struct {
	Workload    *workload.Workload
	Service     *corev1.Service
	ServicePort corev1.ServicePort
	AppPort     int32  // the app's port number the Service port leads to
	Container   string // the container that declares it ("" when none does)
	// Redirect: a headless Service leads to the port too, so the capture
	// is made inside the pod (an init container redirects the port to the
	// sidecar) rather than by the Service's targetPort.
	Redirect bool
	Warning  string // what the intercept will not take, when something will not
	// Also: the other Service ports with cluster addresses that lead to
	// the app port, captured with ServicePort.
	Also []ServicePort
	// Avoid: the app's ports the Services lead to, which a new listener
	// must not take (a container need not declare them).
	Avoid []int32
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Service *corev1.Service
	Port    corev1.ServicePort
}

// Resolve finds the workload, the Service in front of it and the port.
func Resolve(ctx context.Context, wc workload.Client, t Target) (*Plan, error) {
	w, service, err := wc.Find(ctx, t.Namespace, t.Workload)
	if err != nil {
		return nil, err
	}
	if workload.IsBatch(w.Kind) {
		if !t.Replace {
			return nil, fmt.Errorf("%w: %s runs its pods to completion, a run at a time, and tunnel intercepts no traffic of theirs (a sidecar would keep them running); `tunnel intercept %s --replace` suspends it so that this machine does its work instead", ErrBatch, w.Describe(), w.Ref)
		}
		// Nothing sends it traffic and no sidecar goes in: the replace
		// suspends it, and the intercept holds it by no port.
		return &Plan{Workload: w}, nil
	}
	if why := workload.Partial(w); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrPartial, why)
	}
	if w.Template.Spec.HostNetwork {
		// The sidecar's ports would be the node's, and a capture inside
		// the pod would rewrite the node's own traffic.
		return nil, fmt.Errorf("%w: %s runs its pods in the node's network (hostNetwork), where the sidecar's listeners would take the node's ports and a capture would redirect the node's own traffic; tunnel intercepts pods with a network of their own", ErrHostNetwork, w.Describe())
	}
	if t.Service == "" {
		t.Service = service
	}
	svcs, err := rollout.ServicesSelecting(ctx, wc.CS, w.Namespace, w.Template.Labels, w.AddedLabels()...)
	if err != nil {
		return nil, err
	}
	if t.Service != "" && !slices.ContainsFunc(svcs, func(s corev1.Service) bool { return s.Name == t.Service }) {
		return nil, fmt.Errorf("%w: Service %q does not select the pods of %s", ErrNoService, t.Service, w.Describe())
	}
	// A Service that also sends traffic to another workload's pods is not
	// pointed at the sidecar: those pods have none, and their share of
	// its requests would fail.
	var shared []string
	if len(svcs) > 0 {
		all, err := wc.List(ctx, w.Namespace)
		if err != nil {
			return nil, err
		}
		svcs = slices.DeleteFunc(svcs, func(s corev1.Service) bool {
			var others []string
			for _, o := range all {
				if o.Ref != w.Ref && workload.Selects(&s, o) {
					others = append(others, strings.ToLower(o.Kind)+"/"+o.Name)
				}
			}
			if len(others) > 0 {
				shared = append(shared, fmt.Sprintf("Service %s also selects the pods of %s", s.Name, strings.Join(others, ", ")))
			}
			return len(others) > 0
		})
		if len(svcs) == 0 || t.Service != "" && !slices.ContainsFunc(svcs, func(s corev1.Service) bool { return s.Name == t.Service }) {
			return nil, fmt.Errorf("%w: %s, which have no sidecar, so their share of its requests would fail on the sidecar's port; intercept through a Service in front of %s alone", ErrShared, strings.Join(shared, "; "), w.Describe())
		}
	}
	// The Services the user named (by --service, or by naming the
	// workload by one): which port they lead to is the one taken, through
	// whichever Service leads to it.
	named := slices.DeleteFunc(slices.Clone(svcs), func(s corev1.Service) bool { return t.Service != "" && s.Name != t.Service })
	var all []Plan // every TCP Service port that leads to a port of the app
	for i := range svcs {
		for _, sp := range svcs[i].Spec.Ports {
			if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != "" {
				continue
			}
			p := Plan{Workload: w, Service: &svcs[i], ServicePort: sp}
			p.AppPort, p.Container = appPort(&w.Template, sp, svcs[i].Annotations)
			if p.AppPort == 0 {
				continue
			}
			all = append(all, p)
		}
	}
	asked := func(p Plan) bool {
		return (t.Service == "" || p.Service.Name == t.Service) &&
			(t.Port == "" || p.ServicePort.Name == t.Port || strconv.Itoa(int(p.ServicePort.Port)) == t.Port)
	}
	cands := slices.DeleteFunc(slices.Clone(all), func(p Plan) bool { return !asked(p) })
	appPorts := map[int32]bool{}
	for _, c := range cands {
		appPorts[c.AppPort] = true
	}
	switch {
	case len(svcs) == 0 && t.Replace:
		return replacePlan(w, t.Port)
	case len(svcs) == 0:
		return nil, fmt.Errorf("%w selects the pods of %s, so nothing sends it traffic to intercept (a worker that takes no traffic is replaced with --replace)", ErrNoService, w.Describe())
	case len(cands) == 0 && t.Port != "":
		return nil, fmt.Errorf("%w: there is no TCP port %q on %s, which has %s", ErrNoPort, t.Port, names(named), portList(named))
	case len(cands) == 0:
		return nil, fmt.Errorf("%w: %s has no TCP port to intercept", ErrNoPort, names(named))
	case len(appPorts) > 1:
		return nil, fmt.Errorf("%w: %s has several ports (%s); say which with --port LOCAL:PORT (and --service)", ErrWhichPort, names(named), portList(named))
	}
	// One app port, maybe behind several Service ports, each of which is
	// captured: an intercept takes the app port's traffic, whichever way
	// it comes. The plan names one with a cluster address where there is
	// one, the one asked for first (the probes go there). A headless
	// Service's clients dial the pods' own addresses and the app's port,
	// past any Service's targetPort: when one leads to the port, the
	// capture is made inside the pod (Plan.Redirect).
	var avoid []int32
	for _, p := range all {
		avoid = append(avoid, p.AppPort)
	}
	app := cands[0].AppPort
	cands = append(cands, slices.DeleteFunc(all, func(p Plan) bool { return p.AppPort != app || asked(p) })...)
	best := cands[0]
	for _, c := range cands {
		if !isHeadless(c.Service) {
			best = c
			break
		}
	}
	best.Avoid = avoid
	for _, c := range cands {
		if !isHeadless(c.Service) && (c.Service != best.Service || c.ServicePort.Port != best.ServicePort.Port) {
			best.Also = append(best.Also, ServicePort{Service: c.Service, Port: c.ServicePort})
		}
	}
	var headless *corev1.Service
	for _, c := range cands {
		if isHeadless(c.Service) {
			best.Redirect, headless = true, c.Service
		}
	}
	if best.Redirect {
		// The redirect's init container needs NET_ADMIN, which the
		// baseline and restricted Pod Security Standards refuse.
		if level := enforced(ctx, wc, w.Namespace); level == "baseline" || level == "restricted" {
			why := fmt.Sprintf("namespace %s enforces the %s Pod Security Standard, which refuses the NET_ADMIN capability a capture inside the pods needs", w.Namespace, level)
			if isHeadless(best.Service) {
				return nil, fmt.Errorf("%w: Service %s is headless, so its clients reach the pods of %s at their own addresses, and %s; intercept through a Service with a cluster address", ErrPodSecurity, headless.Name, w.Describe(), why)
			}
			best.Redirect = false
			best.Warning = fmt.Sprintf("clients of headless Service %s, which dial the pods' own addresses, still reach the app: %s", headless.Name, why)
		}
	}
	if len(shared) > 0 {
		best.Warning = strings.Join(append(slices.DeleteFunc([]string{best.Warning}, func(s string) bool { return s == "" }),
			strings.Join(shared, "; ")+", so its clients still reach the app"), "; ")
	}
	return &best, nil
}

// replacePlan is the plan of a replace of a workload no Service selects:
// nothing sends it traffic, and the intercept holds it by one port of its
// containers (port: a declared port's name or number, or any number the
// app listens on; "": the first declared).
func replacePlan(w *workload.Workload, port string) (*Plan, error) {
	p := &Plan{Workload: w}
	for _, c := range w.Template.Spec.Containers {
		if c.Name == Container {
			continue
		}
		for _, cp := range c.Ports {
			if cp.Protocol != corev1.ProtocolTCP && cp.Protocol != "" {
				continue
			}
			if port == "" || port == cp.Name || port == strconv.Itoa(int(cp.ContainerPort)) {
				p.AppPort, p.Container, p.Avoid = cp.ContainerPort, c.Name, []int32{cp.ContainerPort}
				return p, nil
			}
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n > 0 {
		p.AppPort, p.Avoid = int32(n), []int32{int32(n)}
		return p, nil
	}
	if port != "" {
		return nil, fmt.Errorf("%w: the containers of %s declare no TCP port %q (no Service selects its pods, so the port is one of theirs)", ErrNoPort, w.Describe(), port)
	}
	return nil, fmt.Errorf("%w: no Service selects the pods of %s and its containers declare no TCP port; give one its app listens on, which the intercept holds it by: --port LOCAL:PORT", ErrNoPort, w.Describe())
}

// enforced is the Pod Security Standard namespace ns enforces ("" when
// none, or when the user may not read the namespace).
func enforced(ctx context.Context, wc workload.Client, ns string) string {
	n, err := wc.CS.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return n.Labels["pod-security.kubernetes.io/enforce"]
}

func isHeadless(s *corev1.Service) bool { return s.Spec.ClusterIP == corev1.ClusterIPNone }

// appPort is the app's port number a Service port leads to: a named
// targetPort is looked up in the containers; a number need not be declared.
// A port tunnel already captures is read from the Service's annotation.
func appPort(t *corev1.PodTemplateSpec, sp corev1.ServicePort, annots map[string]string) (int32, string) {
	target := sp.TargetPort
	if orig, ok := captured(annots)[portKey(sp)]; ok {
		target = orig
	}
	if target.Type == intstr.String {
		for _, c := range t.Spec.Containers {
			for _, p := range c.Ports {
				if p.Name == target.StrVal && (p.Protocol == corev1.ProtocolTCP || p.Protocol == "") {
					return p.ContainerPort, c.Name
				}
			}
		}
		return 0, ""
	}
	n := target.IntVal
	if n == 0 {
		n = sp.Port
	}
	for _, c := range t.Spec.Containers {
		for _, p := range c.Ports {
			if p.ContainerPort == n {
				return n, c.Name
			}
		}
	}
	return n, ""
}

func portKey(sp corev1.ServicePort) string {
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	return fmt.Sprintf("%d/%s", sp.Port, proto)
}

// captured parses a Service's CapturedAnnot: port key → original targetPort.
func captured(annots map[string]string) map[string]intstr.IntOrString {
	out := map[string]intstr.IntOrString{}
	for _, kv := range strings.Split(annots[CapturedAnnot], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			out[k] = intstr.Parse(v)
		}
	}
	return out
}

func formatCaptured(m map[string]intstr.IntOrString) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := m[k]
		parts = append(parts, k+"="+v.String())
	}
	return strings.Join(parts, ",")
}

func names(svcs []corev1.Service) string {
	var n []string
	for _, s := range svcs {
		n = append(n, "Service "+s.Name)
	}
	return strings.Join(n, ", ")
}

func portList(svcs []corev1.Service) string {
	var out []string
	for _, s := range svcs {
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				out = append(out, fmt.Sprintf("%s (%d)", p.Name, p.Port))
			} else {
				out = append(out, strconv.Itoa(int(p.Port)))
			}
		}
	}
	return strings.Join(out, ", ")
}
