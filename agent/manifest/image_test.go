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
		return corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
			{Name: "manager", Image: image, ImageID: id, Ready: ready},
		}}}
	}
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	r, err := RunningImage(d, []corev1.Pod{
		pod("reg.example/t/tunnel-agent:v0", "reg.example/t/tunnel-agent@sha256:0000000000000000000000000000000000000000000000000000000000000000", true),
		pod("reg.example/t/tunnel-agent:v1", "reg.example/t/tunnel-agent@"+digest, false),
	})
	if err != nil || r.Image != "reg.example/t/tunnel-agent:v1" {
		t.Errorf("without a ready pod of this image: %+v, %v", r, err)
	}
	r, err = RunningImage(d, []corev1.Pod{pod("reg.example/t/tunnel-agent:v1", "reg.example/t/tunnel-agent@"+digest, true)})
	if err != nil || r.Image != "reg.example/t/tunnel-agent@"+digest || r.Tag != "reg.example/t/tunnel-agent:v1" {
		t.Errorf("a ready pod: %+v, %v", r, err)
	}
	if len(r.PullSecrets) != 1 || r.PullSecrets[0] != "pull" {
		t.Errorf("pull secrets %v", r.PullSecrets)
	}
}
