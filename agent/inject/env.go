package inject

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/workload"
)

// Environment is what the kubelet gives container in a running pod of w:
// the Service links, then envFrom, then env, with $(VAR) references
// expanded, ConfigMaps and Secrets read with the user's own credentials and
// downward-API fields taken from the pod. It leaves out what the image
// itself sets (PATH and the like), which must not replace the laptop's.
func Environment(ctx context.Context, cs kubernetes.Interface, w *workload.Workload, container string) (map[string]string, error) {
	pod, err := runningPod(ctx, cs, w)
	if err != nil {
		return nil, err
	}
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container || (container == "" && pod.Spec.Containers[i].Name != Container) {
			c = &pod.Spec.Containers[i]
			break
		}
	}
	if c == nil {
		return nil, fmt.Errorf("pod %s has no container %q", pod.Name, container)
	}
	env := map[string]string{"HOSTNAME": pod.Name}
	if pod.Spec.Hostname != "" {
		env["HOSTNAME"] = pod.Spec.Hostname
	}
	links, err := serviceLinks(ctx, cs, pod)
	if err != nil {
		return nil, err
	}
	maps.Copy(env, links)

	cms := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getCM := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := cms[name]; ok {
			return cm, nil
		}
		cm, err := cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		cms[name] = cm
		return cm, nil
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := cs.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		secrets[name] = s
		return s, nil
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := getCM(ef.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(ef.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("read ConfigMap %s for the environment: %w", ef.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s, err := getSecret(ef.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(ef.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("read Secret %s for the environment: %w", ef.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				env[ef.Prefix+k] = string(v)
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		v, ok, err := valueFrom(e.ValueFrom, pod, getCM, getSecret)
		if err != nil {
			return nil, fmt.Errorf("environment variable %s: %w", e.Name, err)
		}
		if ok {
			env[e.Name] = v
		}
	}
	return env, nil
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// runningPod picks a running pod of w, ready ones first. A Job or
// CronJob, whose pods come and go a run at a time (and stop while it is
// replaced), gives a pod made from its template: what the pod itself
// would say (its IP, its node) is then left empty.
func runningPod(ctx context.Context, cs kubernetes.Interface, w *workload.Workload) (*corev1.Pod, error) {
	if workload.IsBatch(w.Kind) {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: w.Name, Namespace: w.Namespace, Labels: w.Template.Labels,
			Annotations: w.Template.Annotations}, Spec: *w.Template.Spec.DeepCopy()}, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(w.Selector)
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods(w.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list the pods of %s: %w", w.Describe(), err)
	}
	var best *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		if best == nil || (podIsReady(p) && !podIsReady(best)) {
			best = p
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%s has no running pod to take the environment from", w.Describe())
	}
	return best, nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// valueFrom resolves one env entry's source; ok is false for an optional
// key that is missing (the kubelet leaves such a variable out).
func valueFrom(src *corev1.EnvVarSource, pod *corev1.Pod,
	getCM func(string) (*corev1.ConfigMap, error), getSecret func(string) (*corev1.Secret, error)) (string, bool, error) {
	switch {
	case src.FieldRef != nil:
		v, err := podField(pod, src.FieldRef.FieldPath)
		return v, err == nil, err
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := getCM(r.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && ptrTrue(r.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("read ConfigMap %s: %w", r.Name, err)
		}
		v, ok := cm.Data[r.Key]
		if !ok && !ptrTrue(r.Optional) {
			return "", false, fmt.Errorf("ConfigMap %s has no key %s", r.Name, r.Key)
		}
		return v, ok, nil
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := getSecret(r.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && ptrTrue(r.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("read Secret %s: %w", r.Name, err)
		}
		v, ok := s.Data[r.Key]
		if !ok && !ptrTrue(r.Optional) {
			return "", false, fmt.Errorf("Secret %s has no key %s", r.Name, r.Key)
		}
		return string(v), ok, nil
	case src.ResourceFieldRef != nil:
		return "", false, nil // resource limits depend on the node; left out
	}
	return "", false, nil
}

// podField is the downward API's value of path for pod.
func podField(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		ips := make([]string, 0, len(pod.Status.PodIPs))
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	case "status.hostIPs":
		ips := make([]string, 0, len(pod.Status.HostIPs))
		for _, ip := range pod.Status.HostIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if path == prefix {
			return formatMap(m), nil
		}
		if rest, ok := strings.CutPrefix(path, prefix+"['"); ok {
			return m[strings.TrimSuffix(rest, "']")], nil
		}
	}
	return "", fmt.Errorf("unsupported field %s", path)
}

func formatMap(m map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// expand replaces $(VAR) with VAR's value when defined, and $$ with $, as
// the kubelet does; other text stays as written.
func expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// serviceLinks are the variables the kubelet adds for the Services of the
// pod's namespace (when the pod wants them) and the API server's Service.
func serviceLinks(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) (map[string]string, error) {
	// By name, as the kubelet keeps them: the API server's own Service
	// from default, unless the pod's namespace has one of that name.
	byName := map[string]*corev1.Service{}
	if k, err := cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		byName[k.Name] = k // a user who may not read it gets the rest
	}
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, err := cs.CoreV1().Services(pod.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Everything().String()})
		if err != nil {
			return nil, fmt.Errorf("list services for the environment: %w", err)
		}
		for i := range list.Items {
			if s := &list.Items[i]; s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
				byName[s.Name] = s
			}
		}
	}
	env := map[string]string{}
	for _, s := range byName {
		addLinks(env, s)
	}
	return env, nil
}

// addLinks adds one Service's Docker-link style variables.
func addLinks(env map[string]string, s *corev1.Service) {
	if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
		return
	}
	name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
	ip := s.Spec.ClusterIP
	first := s.Spec.Ports[0]
	env[name+"_SERVICE_HOST"] = ip
	env[name+"_SERVICE_PORT"] = strconv.Itoa(int(first.Port))
	for _, p := range s.Spec.Ports {
		if p.Name != "" {
			env[name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))] = strconv.Itoa(int(p.Port))
		}
	}
	proto := strings.ToLower(string(first.Protocol))
	env[name+"_PORT"] = proto + "://" + net.JoinHostPort(ip, strconv.Itoa(int(first.Port)))
	for _, p := range s.Spec.Ports {
		proto := strings.ToLower(string(p.Protocol))
		prefix := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(proto))
		env[prefix] = proto + "://" + net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))
		env[prefix+"_PROTO"] = proto
		env[prefix+"_PORT"] = strconv.Itoa(int(p.Port))
		env[prefix+"_ADDR"] = ip
	}
}
