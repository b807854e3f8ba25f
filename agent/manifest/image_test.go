package manifest

import (
	"errors"
	corev1 "k8s.io/api/core/v1"
	"strings"
	"testing"

	"tunnel.dev/tunnel/version"
)

func TestAgentImage(t *testing.T) {
	v := version.Get().Version
	t.Setenv(RegistryEnv, "")
	if got, err := AgentImage("my.registry/agent@sha256:abc", "other"); err != nil || got != "my.registry/agent@sha256:abc" {
		t.Errorf("an exact image: %q, %v", got, err)
	}
	if got, err := AgentImage("", "reg.example:5000/team/"); err != nil || got != "reg.example:5000/team/tunnel-agent:"+v {
		t.Errorf("--registry: %q, %v", got, err)
	}
	t.Setenv(RegistryEnv, "env.example/tools")
	if got, err := AgentImage("", ""); err != nil || got != "env.example/tools/tunnel-agent:"+v {
		t.Errorf("$%s: %q, %v", RegistryEnv, got, err)
	}
	if got, _ := AgentImage("", "flag.example"); !strings.HasPrefix(got, "flag.example/") {
		t.Errorf("--registry does not win over the environment: %q", got)
	}
	if _, err := AgentImage("", "Not A Registry"); err == nil {
		t.Error("a malformed registry was taken")
	}
	t.Setenv(RegistryEnv, "")
	if version.Registry() == "" {
		if _, err := AgentImage("", ""); !errors.Is(err, ErrNoRegistry) {
			t.Errorf("no registry anywhere: %v", err)
		}
	}
}

func TestRunningImagePinsTheDigestAReadyPodPulled(t *testing.T) {
	o := Build(Options{Image: "reg.example/t/tunnel-agent:v1", PullSecrets: []string{"pull"}})
	d := o.Deployment
	pod := func(image, id string, ready bool) corev1.Pod {
		// The runtime may name another tag of the same image in the status.
		return corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "manager", Image: image}}},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
				{Name: "manager", Image: "other.example/any:tag", ImageID: id, Ready: ready},
			}}}
	}
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	r, err := RunningImage(d, []corev1.Pod{
		pod("reg.example/t/tunnel-agent:v0", "reg.example/t/tunnel-agent@sha256:0000000000000000000000000000000000000000000000000000000000000000", true),
		pod("reg.example/t/tunnel-agent:v1", "reg.example/t/tunnel-agent@"+digest, false),
	})
	if err == nil || r.Tag != "reg.example/t/tunnel-agent:v1" {
		t.Errorf("without a ready pod of this image: %+v, %v; want an error", r, err)
	}
	r, err = RunningImage(d, []corev1.Pod{pod("reg.example/t/tunnel-agent:v1", "reg.example/t/tunnel-agent@"+digest, true)})
	if err != nil || r.Image != "reg.example/t/tunnel-agent@"+digest || r.Tag != "reg.example/t/tunnel-agent:v1" {
		t.Errorf("a ready pod: %+v, %v", r, err)
	}
	if len(r.PullSecrets) != 1 || r.PullSecrets[0] != "pull" {
		t.Errorf("pull secrets %v", r.PullSecrets)
	}
}

func TestRegistryOf(t *testing.T) {
	for image, want := range map[string]string{
		"10.209.0.1:5000/tunnel/tunnel-agent:v1":                         "10.209.0.1:5000/tunnel",
		"reg.example/a/b/tunnel-agent@sha256:" + strings.Repeat("1", 64): "reg.example/a/b",
		"reg.example/tunnel-agent:v1":                                    "reg.example",
		"reg.example/team/other:v1":                                      "",
		"not an image":                                                   "",
	} {
		if got := RegistryOf(image); got != want {
			t.Errorf("RegistryOf(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestYAMLIsTheInstall(t *testing.T) {
	out, err := YAML(Options{Image: "reg.example/tunnel-agent:v1", Version: "v1", PullSecrets: []string{"pull"}, AllowUsers: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{"kind: Namespace", "kind: Deployment", "apiVersion: apps/v1", "image: reg.example/tunnel-agent:v1",
		"- name: pull", "kind: RoleBinding", "kind: ClusterRoleBinding", "app.kubernetes.io/version: v1"} {
		if !strings.Contains(s, want) {
			t.Errorf("the YAML lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "status:") || strings.Contains(s, "creationTimestamp") {
		t.Errorf("the YAML carries fields the server sets:\n%s", s)
	}
	// The eleven objects of an install without its key (the WireGuard
	// path's Service among them), and the CSR policy and its binding.
	if n := strings.Count(s, "---\n"); n != 13 || !strings.Contains(s, "kind: ValidatingAdmissionPolicy\n") {
		t.Errorf("%d documents, want 13 with the CSR policy", n)
	}
}
