//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/integration/lab"
	"tunnel.dev/tunnel/rollout"
)

// A Job or CronJob runs its pods to completion and takes no traffic, so
// --replace suspends it: a Job's running pods stop, a CronJob starts no
// new Job, the laptop gets the pods' environment (a ConfigMap's value
// among it), list shows who holds it, and leave resumes it exactly as it
// was. Without --replace, one sentence says what tunnel does with it.
func TestReplaceAJobAndACronJob(t *testing.T) {
	installManager(t)
	ctx := context.Background()
	ns := h.Namespace(t)
	if _, err := h.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "reports"},
		Data: map[string]string{"to": "finance@example.org"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	template := func(app string) corev1.PodTemplateSpec {
		tmpl := lab.EchoTemplate(map[string]string{"app": app})
		tmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
		tmpl.Spec.Containers[0].Env = append(tmpl.Spec.Containers[0].Env, corev1.EnvVar{Name: "REPORT_TO", ValueFrom: &corev1.EnvVarSource{
			ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "reports"}, Key: "to"}}})
		return tmpl
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "backfill", Namespace: ns},
		Spec: batchv1.JobSpec{Parallelism: ptr.To(int32(2)), Completions: ptr.To(int32(2)), Template: template("backfill")}}
	if _, err := h.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cron := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: "digest", Namespace: ns},
		Spec: batchv1.CronJobSpec{Schedule: "0 3 1 1 *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template("digest")}}}}
	if _, err := h.Client.BatchV1().CronJobs(ns).Create(ctx, cron, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := func(what string, want int) {
		t.Helper()
		eventually(t, 2*time.Minute, what, func() (bool, string) {
			pods, err := h.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=backfill"})
			if err != nil {
				return false, err.Error()
			}
			ready, alive := 0, 0
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
					alive++
					if rollout.Ready(&p) {
						ready++
					}
				}
			}
			return ready == want && alive == want, fmt.Sprintf("%d pods of the Job alive, %d ready", alive, ready)
		})
	}
	running("the Job's 2 pods run", 2)
	beforeJob := kindState(t, ns, "Job", "backfill")
	beforeCron := kindState(t, ns, "CronJob", "digest")

	l := newLaptop(t, "batch", "admin")
	l.must("connect", "-n", ns)
	if out, err := l.run("intercept", "cronjob/digest"); err == nil || !strings.Contains(out, "`tunnel intercept cronjob/digest --replace` suspends it") {
		t.Errorf("intercept of a CronJob without --replace: %v\n%s", err, out)
	}

	env := filepath.Join(t.TempDir(), "backfill.env")
	out := l.must("intercept", "job/backfill", "--replace", "--env-file", env)
	t.Logf("intercept job/backfill --replace:\n%s", out)
	if !strings.Contains(out, "job "+ns+"/backfill is suspended: its pods are stopped") {
		t.Errorf("intercept --replace of a Job says:\n%s", out)
	}
	j, err := h.Client.BatchV1().Jobs(ns).Get(ctx, "backfill", metav1.GetOptions{})
	if err != nil || j.Spec.Suspend == nil || !*j.Spec.Suspend || j.Status.Active != 0 {
		t.Errorf("the replaced Job: %v, suspend %v, %d pods active; want suspended, none", err, j.Spec.Suspend, j.Status.Active)
	}
	if b, err := os.ReadFile(env); err != nil || !strings.Contains(string(b), "REPORT_TO=finance@example.org") || !strings.Contains(string(b), "POD_NAME=backfill") {
		t.Errorf("the Job's environment on the laptop: %v\n%s", err, b)
	}

	out = l.must("intercept", "digest", "--replace", "--name", "my-digest")
	t.Logf("intercept digest --replace:\n%s", out)
	if !strings.Contains(out, "cronjob "+ns+"/digest is suspended: it starts no Job") {
		t.Errorf("intercept --replace of a CronJob says:\n%s", out)
	}
	c, err := h.Client.BatchV1().CronJobs(ns).Get(ctx, "digest", metav1.GetOptions{})
	if err != nil || c.Spec.Suspend == nil || !*c.Spec.Suspend {
		t.Errorf("the replaced CronJob: %v, suspend %v", err, c.Spec.Suspend)
	}
	ws := list(t, l, ns)
	for ref, name := range map[string]string{"job/backfill": "backfill-job", "cronjob/digest": "my-digest"} {
		if w := ws[ref]; w.ReplacedFor != name || len(w.Intercepts) != 1 || w.Intercepts[0].Name != name {
			t.Errorf("list shows %s as %+v, want it replaced for %s", ref, w, name)
		}
	}
	// A second user may not take a Job another holds.
	other := newLaptop(t, "batchtwo", "admin")
	other.must("connect", "-n", ns)
	if out, err := other.run("intercept", "job/backfill", "--replace", "--name", "again"); err == nil {
		t.Errorf("a second replace of the held Job was taken:\n%s", out)
	} else {
		t.Logf("a second replace of the held Job: %s", out)
	}
	t.Logf("list:\n%s", l.must("list", "-n", ns))

	l.must("leave", "backfill-job")
	l.must("leave", "my-digest")
	running("the Job's pods run again after leave", 2)
	if after := kindState(t, ns, "Job", "backfill"); after != beforeJob {
		t.Errorf("the Job is not as it was:\nbefore:\n%s\nafter:\n%s", beforeJob, after)
	}
	if after := kindState(t, ns, "CronJob", "digest"); after != beforeCron {
		t.Errorf("the CronJob is not as it was:\nbefore:\n%s\nafter:\n%s", beforeCron, after)
	}
}
