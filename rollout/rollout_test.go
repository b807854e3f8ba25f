package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func deployment(name string, containers ...corev1.Container) *appsv1.Deployment {
	lbl := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec:       corev1.PodSpec{Containers: containers},
			},
		},
	}
}

// podOf is a pod of d's current template, its app container in state.
func podOf(d *appsv1.Deployment, name string, state corev1.ContainerState) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: name, Labels: d.Spec.Template.Labels},
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
		Status: corev1.PodStatus{
			Phase:             corev1.PodPending,
			ContainerStatuses: []corev1.ContainerStatus{{Name: d.Spec.Template.Spec.Containers[0].Name, State: state}},
		},
	}
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

func TestPodTrouble(t *testing.T) {
	d := deployment("web", corev1.Container{Name: "app", Image: "web:v2"})
	older := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.Containers[0].Image = "web:v1"
		return p
	}
	otherApp := func(p *corev1.Pod) *corev1.Pod {
		p.Labels = map[string]string{"app": "api"}
		return p
	}
	initCrash := func(p *corev1.Pod) *corev1.Pod {
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "migrate", State: waiting("CrashLoopBackOff", "")}}
		return p
	}
	unschedulable := func(p *corev1.Pod) *corev1.Pod {
		p.Status.ContainerStatuses = nil
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Message: "0/3 nodes are available"}}
		return p
	}
	tests := []struct {
		name      string
		pod       *corev1.Pod
		wantIn    []string // substrings of the reason; none means ""
		permanent bool
	}{
		{name: "image pull back-off", pod: podOf(d, "web-1", waiting("ImagePullBackOff", `Back-off pulling image "web:v2"`)),
			wantIn: []string{"pod web-1", "container app", "ImagePullBackOff", `Back-off pulling image "web:v2"`}, permanent: true},
		{name: "crash loop", pod: podOf(d, "web-1", waiting("CrashLoopBackOff", "")),
			wantIn: []string{"pod web-1", "container app", "CrashLoopBackOff"}, permanent: true},
		{name: "init container crash loop", pod: initCrash(podOf(d, "web-1", waiting("PodInitializing", ""))),
			wantIn: []string{"container migrate", "CrashLoopBackOff"}, permanent: true},
		{name: "container creating", pod: podOf(d, "web-1", waiting("ContainerCreating", ""))},
		{name: "pod initializing", pod: podOf(d, "web-1", waiting("PodInitializing", ""))},
		{name: "older template ignored", pod: older(podOf(d, "web-0", waiting("ImagePullBackOff", "")))},
		{name: "other workload ignored", pod: otherApp(podOf(d, "api-1", waiting("ImagePullBackOff", "")))},
		{name: "running, not ready",
			pod:    podOf(d, "web-1", corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}),
			wantIn: []string{"pod web-1", "container app", "not ready"}},
		{name: "unschedulable", pod: unschedulable(podOf(d, "web-1", corev1.ContainerState{})),
			wantIn: []string{"pod web-1 cannot be scheduled", "0/3 nodes"}},
		{name: "unlisted waiting reason is not permanent", pod: podOf(d, "web-1", waiting("SomethingNew", "")),
			wantIn: []string{"SomethingNew"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reason, permanent := podsTrouble(t.Context(), fake.NewClientset(tt.pod), d.Namespace, d.Spec.Selector, func(p *corev1.Pod) bool { return sameTemplate(p, d) })
			if permanent != tt.permanent {
				t.Errorf("podTrouble() permanent = %v, want %v (reason %q)", permanent, tt.permanent, reason)
			}
			if len(tt.wantIn) == 0 && reason != "" {
				t.Errorf("podTrouble() reason = %q, want none", reason)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(reason, s) {
					t.Errorf("podTrouble() reason %q does not mention %q", reason, s)
				}
			}
		})
	}
}

func TestSameTemplate(t *testing.T) {
	d := deployment("web", corev1.Container{Name: "app", Image: "web:v2"}, corev1.Container{Name: "tunnel-agent", Image: "tunnel:v1"})
	pod := func(cs ...corev1.Container) *corev1.Pod { return &corev1.Pod{Spec: corev1.PodSpec{Containers: cs}} }
	tests := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{name: "same", pod: pod(corev1.Container{Name: "app", Image: "web:v2"}, corev1.Container{Name: "tunnel-agent", Image: "tunnel:v1"}), want: true},
		{name: "older image", pod: pod(corev1.Container{Name: "app", Image: "web:v1"}, corev1.Container{Name: "tunnel-agent", Image: "tunnel:v1"})},
		{name: "before the sidecar", pod: pod(corev1.Container{Name: "app", Image: "web:v2"})},
		{name: "renamed container", pod: pod(corev1.Container{Name: "main", Image: "web:v2"}, corev1.Container{Name: "tunnel-agent", Image: "tunnel:v1"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameTemplate(tt.pod, d); got != tt.want {
				t.Errorf("sameTemplate() = %v, want %v", got, tt.want)
			}
		})
	}
}

// A pod that cannot start ends the wait at once, not at the timeout.
func TestWaitRolloutStuckPod(t *testing.T) {
	d := deployment("web", corev1.Container{Name: "app", Image: "web:v2"})
	d.Generation, d.Status.ObservedGeneration = 2, 1
	cs := fake.NewClientset(d, podOf(d, "web-1", waiting("ErrImagePull", "not found")))
	var progress []string
	start := time.Now()
	err := Wait(t.Context(), cs, "shop", "web", time.Minute, func(s string) { progress = append(progress, s) })
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "pod web-1: container app: ErrImagePull: not found") {
		t.Fatalf("WaitRollout = %v, want %v naming the pod's reason", err, ErrFailed)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("WaitRollout took %s to give up on a stuck pod", waited)
	}
	if len(progress) != 1 || !strings.Contains(progress[0], "rollout starting") {
		t.Errorf("progress = %q, want one line saying the rollout is starting", progress)
	}
}

func TestWaitRolloutTimeout(t *testing.T) {
	d := deployment("web", corev1.Container{Name: "app", Image: "web:v2"})
	cs := fake.NewClientset(d, podOf(d, "web-1", waiting("ContainerCreating", "")))
	err := Wait(t.Context(), cs, "shop", "web", 300*time.Millisecond, func(string) {})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "did not roll out within 300ms") {
		t.Fatalf("WaitRollout = %v, want %v saying it timed out", err, ErrFailed)
	}
}

// A StatefulSet's wait ends at once on a pod that will not start, and
// returns when every replica of the new revision is ready.
func TestWaitSet(t *testing.T) {
	two := int32(2)
	set := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db", Generation: 1},
		Spec:       appsv1.StatefulSetSpec{Replicas: &two, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
		Status: appsv1.StatefulSetStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 1,
			CurrentRevision: "db-2", UpdateRevision: "db-2"},
	}
	ready := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-0", Labels: map[string]string{"app": "db", appsv1.ControllerRevisionHashLabelKey: "db-2"}},
		Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-1", Labels: map[string]string{"app": "db", appsv1.ControllerRevisionHashLabelKey: "db-2"}},
		Status:     corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "db", State: waiting("CrashLoopBackOff", "back-off")}}},
	}
	var lines []string
	err := WaitSet(t.Context(), fake.NewClientset(set, ready, pod), "StatefulSet", "shop", "db", time.Minute, func(s string) { lines = append(lines, s) })
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "statefulset shop/db: pod db-1: container db: CrashLoopBackOff") {
		t.Errorf("WaitSet = %v, want the pod's reason", err)
	}
	if len(lines) != 1 || lines[0] != "Waiting for statefulset shop/db: 1 of 2 updated pods ready" {
		t.Errorf("progress %q", lines)
	}
	set.Status.ReadyReplicas = 2
	if err := WaitSet(t.Context(), fake.NewClientset(set), "StatefulSet", "shop", "db", time.Minute, func(string) {}); err != nil {
		t.Errorf("WaitSet of a rolled-out set = %v", err)
	}
}
