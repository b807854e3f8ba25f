package inject

import (
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// readyPod is a running, ready pod of deployment("web") with containers.
func readyPod(name string, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{"x": "team-a"}},
		Spec: corev1.PodSpec{Containers: containers},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      "10.244.1.7",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func cmKeyEnv(name, cm, key string, optional bool) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: cm}, Key: key, Optional: ptr.To(optional)}}}
}

// appContainer is the container whose environment the tests read.
func appContainer() corev1.Container {
	return corev1.Container{
		Name: "app",
		EnvFrom: []corev1.EnvFromSource{
			{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}},
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Optional: ptr.To(true)}},
		},
		Env: []corev1.EnvVar{
			{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "web-secret"}, Key: "password"}}},
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_IP", "status.podIP"),
			fieldEnv("OWNER", "metadata.annotations['x']"),
			{Name: "URL", Value: "http://$(POD_IP):$(CFG_PORT)/$(NOPE)?cost=$$5"},
			cmKeyEnv("MAYBE", "web-config", "missing", true),
		},
	}
}

// cluster is namespace "shop" with web's config, a Service with two named
// ports, a headless one, one in another namespace, and the API server's.
func cluster(pods ...runtime.Object) []runtime.Object {
	withIP := func(s *corev1.Service, ns, ip string) *corev1.Service {
		s.Namespace, s.Spec.ClusterIP = ns, ip
		return s
	}
	return append([]runtime.Object{
		deployment("web", container("app")),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-config"},
			Data: map[string]string{"PORT": "8080", "MODE": "prod"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-secret"},
			Data: map[string][]byte{"password": []byte("s3cret")}},
		withIP(service("web-api", "web", sport("http", 80, intstr.FromInt32(8080)), sport("grpc-port", 9000, intstr.FromInt32(9000))), "shop", "10.96.0.20"),
		withIP(service("db", "db", sport("", 5432, intstr.FromInt32(5432))), "shop", corev1.ClusterIPNone),
		withIP(service("elsewhere", "x", sport("", 80, intstr.FromInt32(80))), "other", "10.96.0.30"),
		withIP(service("kubernetes", "", sport("https", 443, intstr.FromInt32(6443))), "default", "10.96.0.1"),
	}, pods...)
}

func TestEnvironment(t *testing.T) {
	pending := readyPod("web-aaa", appContainer())
	pending.Status.Phase = corev1.PodPending
	pending.Status.PodIP = "10.244.9.9"
	pod := readyPod("web-abc", corev1.Container{Name: Container}, appContainer())
	cs := fake.NewClientset(cluster(pending, pod)...)

	// Container "" is the first that is not the sidecar.
	got, err := Environment(t.Context(), cs, asWorkload(t, deployment("web", container("app"))), "")
	if err != nil {
		t.Fatalf("Environment: %v", err)
	}
	want := map[string]string{
		"HOSTNAME":    "web-abc",
		"CFG_PORT":    "8080",
		"CFG_MODE":    "prod",
		"DB_PASSWORD": "s3cret",
		"POD_NAME":    "web-abc",
		"POD_IP":      "10.244.1.7",
		"OWNER":       "team-a",
		"URL":         "http://10.244.1.7:8080/$(NOPE)?cost=$5",

		"WEB_API_SERVICE_HOST":           "10.96.0.20",
		"WEB_API_SERVICE_PORT":           "80",
		"WEB_API_SERVICE_PORT_HTTP":      "80",
		"WEB_API_SERVICE_PORT_GRPC_PORT": "9000",
		"WEB_API_PORT":                   "tcp://10.96.0.20:80",
		"WEB_API_PORT_80_TCP":            "tcp://10.96.0.20:80",
		"WEB_API_PORT_80_TCP_PROTO":      "tcp",
		"WEB_API_PORT_80_TCP_PORT":       "80",
		"WEB_API_PORT_80_TCP_ADDR":       "10.96.0.20",
		"WEB_API_PORT_9000_TCP":          "tcp://10.96.0.20:9000",
		"WEB_API_PORT_9000_TCP_PROTO":    "tcp",
		"WEB_API_PORT_9000_TCP_PORT":     "9000",
		"WEB_API_PORT_9000_TCP_ADDR":     "10.96.0.20",

		"KUBERNETES_SERVICE_HOST":       "10.96.0.1",
		"KUBERNETES_SERVICE_PORT":       "443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT":               "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP":       "tcp://10.96.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO": "tcp",
		"KUBERNETES_PORT_443_TCP_PORT":  "443",
		"KUBERNETES_PORT_443_TCP_ADDR":  "10.96.0.1",
	}
	diffEnv(t, got, want)
}

// Without service links only the API server's Service is linked; the
// hostname is the pod's own when it sets one.
func TestEnvironmentNoServiceLinks(t *testing.T) {
	pod := readyPod("web-abc", corev1.Container{Name: "app", Env: []corev1.EnvVar{{Name: "A", Value: "$(KUBERNETES_SERVICE_HOST)"}}})
	pod.Spec.EnableServiceLinks = ptr.To(false)
	pod.Spec.Hostname = "web-0"
	cs := fake.NewClientset(cluster(pod)...)
	got, err := Environment(t.Context(), cs, asWorkload(t, deployment("web", container("app"))), "app")
	if err != nil {
		t.Fatalf("Environment: %v", err)
	}
	for k := range got {
		if strings.HasPrefix(k, "WEB_API_") {
			t.Errorf("service links disabled, yet %s=%s", k, got[k])
		}
	}
	if got["HOSTNAME"] != "web-0" || got["A"] != "10.96.0.1" || got["KUBERNETES_SERVICE_HOST"] != "10.96.0.1" {
		t.Errorf("HOSTNAME=%q A=%q KUBERNETES_SERVICE_HOST=%q, want web-0, 10.96.0.1, 10.96.0.1",
			got["HOSTNAME"], got["A"], got["KUBERNETES_SERVICE_HOST"])
	}
}

func TestEnvironmentErrors(t *testing.T) {
	notRunning := readyPod("web-abc", appContainer())
	notRunning.Status.Phase = corev1.PodPending
	tests := []struct {
		name      string
		pod       *corev1.Pod
		container string
		wantMsg   string
	}{
		{name: "no running pod", pod: notRunning, wantMsg: "no running pod"},
		{name: "no such container", pod: readyPod("web-abc", appContainer()), container: "nope", wantMsg: `no container "nope"`},
		{name: "missing ConfigMap", wantMsg: "ConfigMap absent",
			pod: readyPod("web-abc", corev1.Container{Name: "app", EnvFrom: []corev1.EnvFromSource{
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}}})},
		{name: "missing required key", wantMsg: "ConfigMap web-config has no key missing",
			pod: readyPod("web-abc", corev1.Container{Name: "app", Env: []corev1.EnvVar{cmKeyEnv("M", "web-config", "missing", false)}})},
		{name: "unsupported field", wantMsg: "unsupported field spec.nope",
			pod: readyPod("web-abc", corev1.Container{Name: "app", Env: []corev1.EnvVar{fieldEnv("F", "spec.nope")}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewClientset(cluster(tt.pod)...)
			_, err := Environment(t.Context(), cs, asWorkload(t, deployment("web", container("app"))), tt.container)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Environment error = %v, want one mentioning %q", err, tt.wantMsg)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "a", "B": "b", "EMPTY": ""}
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "a"},
		{"$(A)-$(B)", "a-b"},
		{"x$(A)y", "xay"},
		{"$(EMPTY)", ""},
		{"$(NOPE)", "$(NOPE)"}, // undefined stays as written
		{"$()", "$()"},
		{"$$", "$"},
		{"$$(A)", "$(A)"}, // escaped reference
		{"$$$(A)", "$a"},
		{"$(A", "$(A"}, // unterminated
		{"$", "$"},
		{"100$", "100$"},
		{"a$b", "a$b"},
		{"$(A)$", "a$"},
	}
	for _, tt := range tests {
		if got := expand(tt.in, env); got != tt.want {
			t.Errorf("expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// diffEnv reports each variable missing, extra or different.
func diffEnv(t *testing.T, got, want map[string]string) {
	t.Helper()
	if maps.Equal(got, want) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			t.Errorf("missing %s (want %q)", k, want[k])
		} else if g != want[k] {
			t.Errorf("%s = %q, want %q", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s = %q", k, got[k])
		}
	}
}
