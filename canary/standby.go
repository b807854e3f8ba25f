package canary

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// Standby is a canary's driver in the cluster, so that nobody has to keep
// a laptop open: a Job in the canary's namespace that waits while another
// driver holds the lease and drives the canary to its end when it lapses.
//
// It runs as a ServiceAccount of its own, bound to a Role that names the
// canary's own objects and verbs and nothing else; the user who starts the
// canary creates that Role, which RBAC lets them do only with rights they
// hold themselves, so the standby can do no more than they can, in that
// namespace only. The manager gets no rights over Deployments or routes.
// The ServiceAccount, Role and RoleBinding belong to the Job, and go with
// it: the driver that ends the canary deletes the Job, and a Job that ends
// it itself is removed a minute after.
type Standby struct {
	CS          kubernetes.Interface
	Namespace   string
	Image       string   // the agent image, which has the driver; "": none is made
	PullSecrets []string // the secrets that image is pulled with
	// Required refuses a canary whose user may not make the standby,
	// rather than driving it from the CLI only.
	Required bool
}

// StandbyMetricsPort is where the standby serves its canary's state
// (weight, step, phase, checks) for the canary dashboard: it runs for the
// canary's whole life, whoever drives.
const StandbyMetricsPort = 9102

// StandbyName names a canary's standby Job, ServiceAccount and Role.
func StandbyName(service string) string { return "tunnel-canary-" + service }

// StandbyRules are what the standby may do: the canary's record and lease,
// its two Deployments and Services, its route, and listing what a rollout's
// progress reads (pods, Deployments and Services to find the stable one,
// endpoints). create and list cannot be narrowed to names in RBAC. Plan
// checks that the user holds each, since RBAC refuses a Role with more.
func StandbyRules(st *State) []rbacv1.PolicyRule {
	svc, canary := st.Spec.Service, st.Canary
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "update"}, ResourceNames: []string{configMapName(svc)}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "update"}, ResourceNames: []string{configMapName(svc)}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "patch", "delete"}, ResourceNames: []string{st.Stable, canary}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"create", "list"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "patch", "delete"}, ResourceNames: []string{svc, canary}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"create", "list"}},
		// A rollout's progress: its pods, and the Services' endpoints.
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list"}},
	}
	kind, name, _ := strings.Cut(st.Route, "/")
	switch kind {
	case KindHTTPRoute:
		rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes"},
			Verbs: []string{"get", "update"}, ResourceNames: []string{name}})
	case KindMapping:
		rules = append(rules,
			rbacv1.PolicyRule{APIGroups: []string{"getambassador.io"}, Resources: []string{"mappings"},
				Verbs: []string{"get", "patch", "delete"}, ResourceNames: []string{name, name + "-canary", name + "-canary-match"}},
			rbacv1.PolicyRule{APIGroups: []string{"getambassador.io"}, Resources: []string{"mappings"}, Verbs: []string{"create"}})
	}
	return rules
}

// Apply creates the standby for st, or leaves the one there. The Job is
// made suspended, and runs once its account and Role are there; a Job of
// that name that is finished, going, or of another canary is replaced,
// and one that is not tunnel's is refused.
func (s Standby) Apply(ctx context.Context, st *State) error {
	name := StandbyName(st.Spec.Service)
	labels := map[string]string{Label: st.Spec.Service, "app.kubernetes.io/name": "tunnel-canary-driver"}
	want := s.job(st, name, labels)
	jobs := s.CS.BatchV1().Jobs(s.Namespace)
	job, err := s.current(ctx, want)
	if err != nil {
		return err
	}
	if job == nil {
		if job, err = jobs.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
			return fmt.Errorf("create the canary's driver in the cluster (job %s): %w", name, err)
		}
	}
	// What the Job runs as belongs to it, and goes with it.
	meta := metav1.ObjectMeta{Name: name, Namespace: s.Namespace, Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID}}}
	if err := s.ensureRBAC(ctx, st, meta); err != nil {
		return err
	}
	if job.Spec.Suspend != nil && *job.Spec.Suspend {
		patch := []byte(`{"spec":{"suspend":false}}`)
		if _, err := jobs.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
			return fmt.Errorf("start the canary's driver in the cluster: %w", err)
		}
	}
	return nil
}

// current is the standby Job already there for want, or nil once any other
// Job of tunnel's of that name is gone.
func (s Standby) current(ctx context.Context, want *batchv1.Job) (*batchv1.Job, error) {
	jobs := s.CS.BatchV1().Jobs(s.Namespace)
	for deadline := time.Now().Add(time.Minute); ; {
		job, err := jobs.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read job %s: %w", want.Name, err)
		}
		if job.Labels[Label] != want.Labels[Label] || job.Labels["app.kubernetes.io/name"] != "tunnel-canary-driver" {
			return nil, fmt.Errorf("job %s/%s is not tunnel's driver for the canary of %s: remove it, or start the canary with --driver laptop", s.Namespace, want.Name, want.Labels[Label])
		}
		ended := job.Status.CompletionTime != nil || job.Status.Failed > 0 && job.Status.Active == 0
		if job.DeletionTimestamp == nil && !ended && sameDriver(job, want) {
			return job, nil
		}
		if job.DeletionTimestamp == nil {
			err := jobs.Delete(ctx, want.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground),
				Preconditions: &metav1.Preconditions{UID: &job.UID}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				return nil, fmt.Errorf("remove an earlier canary's driver (job %s): %w", want.Name, err)
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("an earlier canary's driver (job %s) is still going after a minute", want.Name)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// sameDriver says whether a Job runs what want would: its image, account
// and arguments (the canary's witness among them).
func sameDriver(job, want *batchv1.Job) bool {
	a, b := job.Spec.Template.Spec, want.Spec.Template.Spec
	return len(a.Containers) == 1 && a.ServiceAccountName == b.ServiceAccountName && a.Containers[0].Image == b.Containers[0].Image &&
		strings.Join(a.Containers[0].Args, "\x00") == strings.Join(b.Containers[0].Args, "\x00")
}

// ensureRBAC makes the standby's account, Role and binding, owned by its
// Job; ones of an earlier Job are taken over and their rules made these.
func (s Standby) ensureRBAC(ctx context.Context, st *State, meta metav1.ObjectMeta) error {
	svc := st.Spec.Service
	sas, roles, bindings := s.CS.CoreV1().ServiceAccounts(s.Namespace), s.CS.RbacV1().Roles(s.Namespace), s.CS.RbacV1().RoleBindings(s.Namespace)
	sa := &corev1.ServiceAccount{ObjectMeta: meta}
	err := createOrAdopt("service account", svc,
		func() error { _, err := sas.Create(ctx, sa, metav1.CreateOptions{}); return err },
		func() (*corev1.ServiceAccount, error) { return sas.Get(ctx, meta.Name, metav1.GetOptions{}) },
		func(o *corev1.ServiceAccount) error {
			o.OwnerReferences = meta.OwnerReferences
			_, err := sas.Update(ctx, o, metav1.UpdateOptions{})
			return err
		})
	if err != nil {
		return err
	}
	role := &rbacv1.Role{ObjectMeta: meta, Rules: StandbyRules(st)}
	err = createOrAdopt("role", svc,
		func() error { _, err := roles.Create(ctx, role, metav1.CreateOptions{}); return err },
		func() (*rbacv1.Role, error) { return roles.Get(ctx, meta.Name, metav1.GetOptions{}) },
		func(o *rbacv1.Role) error {
			o.OwnerReferences, o.Rules = meta.OwnerReferences, role.Rules
			_, err := roles.Update(ctx, o, metav1.UpdateOptions{})
			return err
		})
	if err != nil {
		return err
	}
	binding := &rbacv1.RoleBinding{ObjectMeta: meta,
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: meta.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: meta.Name, Namespace: s.Namespace}}}
	return createOrAdopt("role binding", svc,
		func() error { _, err := bindings.Create(ctx, binding, metav1.CreateOptions{}); return err },
		func() (*rbacv1.RoleBinding, error) { return bindings.Get(ctx, meta.Name, metav1.GetOptions{}) },
		func(o *rbacv1.RoleBinding) error {
			o.OwnerReferences, o.Subjects = meta.OwnerReferences, binding.Subjects
			_, err := bindings.Update(ctx, o, metav1.UpdateOptions{})
			return err
		})
}

// createOrAdopt creates an object of the standby's, or takes over the one
// of that name when it is tunnel's for this canary (an earlier Job's, not
// yet collected): adopt makes it this Job's and writes it.
func createOrAdopt[T metav1.Object](what, service string, create func() error, get func() (T, error), adopt func(T) error) error {
	err := create()
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create the canary driver's %s: %w", what, err)
	}
	obj, err := get()
	if err != nil {
		return fmt.Errorf("read the canary driver's %s: %w", what, err)
	}
	if obj.GetLabels()[Label] != service {
		return fmt.Errorf("%s %s is not tunnel's, for the canary of %s: remove it, or start the canary with --driver laptop", what, obj.GetName(), service)
	}
	if err := adopt(obj); err != nil {
		return fmt.Errorf("take over the canary driver's %s: %w", what, err)
	}
	return nil
}

// Delete removes the standby and, through their owner, its account and
// role; a Job of that name that is not tunnel's is left alone.
func (s Standby) Delete(ctx context.Context, service string) error {
	jobs := s.CS.BatchV1().Jobs(s.Namespace)
	job, err := jobs.Get(ctx, StandbyName(service), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the canary's driver in the cluster: %w", err)
	}
	if job.Labels[Label] != service {
		return nil
	}
	err = jobs.Delete(ctx, job.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground),
		Preconditions: &metav1.Preconditions{UID: &job.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete the canary's driver in the cluster: %w", err)
	}
	return nil
}

// job is the standby's Job: restarted when its pod dies, bounded in time
// and resources, with no more than it needs.
func (s Standby) job(st *State, name string, labels map[string]string) *batchv1.Job {
	// Long enough for every step to idle to its limit and two rollouts;
	// never forever.
	steps := time.Duration(len(st.Spec.Steps)*(st.Spec.MaxIdle+1)) * time.Duration(st.Spec.Interval)
	deadline := max(time.Hour, 3*(steps+2*st.Spec.Timeout))
	var secrets []corev1.LocalObjectReference
	for _, n := range s.PullSecrets {
		secrets = append(secrets, corev1.LocalObjectReference{Name: n})
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.Namespace, Labels: labels},
		Spec: batchv1.JobSpec{
			Suspend:                 ptr.To(true),
			BackoffLimit:            ptr.To(int32(20)),
			ActiveDeadlineSeconds:   ptr.To(int64(deadline / time.Second)),
			TTLSecondsAfterFinished: ptr.To(int32(60)),
			Template: corev1.PodTemplateSpec{
				// Its canary's state, for the canary dashboard: scraped as
				// Prometheus' usual annotations say.
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
					"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(StandbyMetricsPort)}},
				Spec: corev1.PodSpec{
					ServiceAccountName:            name,
					AutomountServiceAccountToken:  ptr.To(true),
					RestartPolicy:                 corev1.RestartPolicyOnFailure,
					ImagePullSecrets:              secrets,
					TerminationGracePeriodSeconds: ptr.To(int64(10)),
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{{
						Name: "driver", Image: s.Image,
						Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: StandbyMetricsPort}},
						// The witness is the user's word on what the canary
						// is: the standby's account cannot change its Job,
						// and it acts on no record that differs.
						Args: []string{"canary-driver", "--service", st.Spec.Service, "--witness", string(witnessJSON(st))},
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
						},
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
						},
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
					}},
				},
			},
		},
	}
}

// witnessJSON is the canary's witness as the standby takes it.
func witnessJSON(st *State) []byte {
	data, _ := json.Marshal(witness(st))
	return data
}

// CheckWitness refuses a record that is not what the witness says the
// canary started as.
func CheckWitness(st *State, w map[string]string) error {
	for k, v := range witness(st) {
		if w[k] != v {
			return fmt.Errorf("%w: the record says %s %q, the canary was started with %q (someone edited configmap %s)",
				errUntrusted, strings.TrimPrefix(k, "tunnel.dev/canary-"), v, w[k], configMapName(st.Spec.Service))
		}
	}
	return nil
}
