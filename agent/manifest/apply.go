package manifest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"tunnel.dev/tunnel/access"
	"tunnel.dev/tunnel/rollout"
)

// ErrForbidden means the user may not install (or remove) the manager.
var ErrForbidden = access.ErrForbidden

// CheckAccess asks the API server whether the user may do everything an
// install does, before anything is created: a refusal halfway would leave
// half an install behind.
func CheckAccess(ctx context.Context, cs kubernetes.Interface, verbs ...string) error {
	var attrs []authzv1.ResourceAttributes
	for _, verb := range verbs {
		for _, r := range []authzv1.ResourceAttributes{
			{Resource: "namespaces"},
			{Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
			{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"},
			{Group: "admissionregistration.k8s.io", Resource: "validatingadmissionpolicies"},
			{Group: "admissionregistration.k8s.io", Resource: "validatingadmissionpolicybindings"},
			{Namespace: Namespace, Group: "apps", Resource: "deployments"},
			{Namespace: Namespace, Resource: "services"},
			{Namespace: Namespace, Resource: "secrets"},
			{Namespace: Namespace, Resource: "serviceaccounts"},
			{Namespace: Namespace, Group: "rbac.authorization.k8s.io", Resource: "roles"},
			{Namespace: Namespace, Group: "rbac.authorization.k8s.io", Resource: "rolebindings"},
		} {
			r.Verb = verb
			attrs = append(attrs, r)
		}
	}
	denied, err := access.Denied(ctx, cs, attrs...)
	if err != nil {
		return err
	}
	if len(denied) > 0 {
		return fmt.Errorf("%w: you may not %s", ErrForbidden, strings.Join(denied, ", "))
	}
	return nil
}

// Install creates or updates every object, then waits up to timeout for
// the manager to be ready. If a step fails, or the manager never becomes
// ready, what this call created is deleted again, and only that (a
// namespace an admin made beforehand, with a pull secret in it, stays),
// and a Deployment it updated gets its old spec back: a failed upgrade
// leaves the manager that ran.
func Install(ctx context.Context, cs kubernetes.Interface, opt Options, timeout time.Duration) (err error) {
	if opt.Image == "" {
		return ErrNoRegistry
	}
	if err := CheckAccess(ctx, cs, "create", "update"); err != nil {
		return err
	}
	o := Build(opt)
	prev, gerr := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
	if gerr != nil {
		prev = nil
	}
	var created []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if prev != nil {
			if rerr := restore(uctx, cs, prev); rerr != nil {
				err = fmt.Errorf("%w (and putting the manager back as it was failed: %v)", err, rerr)
			}
		}
		for i := len(created) - 1; i >= 0; i-- {
			_ = created[i](uctx)
		}
		if prev == nil {
			waitGone(uctx, cs)
		}
	}()
	if err := apply(ctx, cs, o, &created); err != nil {
		return err
	}
	return WaitReady(ctx, cs, timeout)
}

// policiesServed asks discovery whether admissionregistration.k8s.io/v1
// serves ValidatingAdmissionPolicies.
func policiesServed(cs kubernetes.Interface) (bool, error) {
	list, err := cs.Discovery().ServerResourcesForGroupVersion("admissionregistration.k8s.io/v1")
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover admissionregistration.k8s.io/v1: %w", err)
	}
	for _, r := range list.APIResources {
		if r.Name == "validatingadmissionpolicies" {
			return true, nil
		}
	}
	return false, nil
}

// restore gives the manager's Deployment the labels and spec it had.
func restore(ctx context.Context, cs kubernetes.Interface, prev *appsv1.Deployment) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Labels, d.Spec = prev.Labels, prev.Spec
		_, err = cs.AppsV1().Deployments(Namespace).Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
}

// waitGone waits until a fresh install's namespace (or, in a namespace
// made beforehand, its Deployment) has gone, so an install right after
// works.
func waitGone(ctx context.Context, cs kubernetes.Interface) {
	_ = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ns, err := cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil || ns.Status.Phase == corev1.NamespaceTerminating {
			return false, nil
		}
		_, err = cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// stepSpec is one object of an install: how to read, create, update and
// (to undo a failed install) remove it.
type stepSpec struct {
	what                string
	get, create, update func() error
	remove              func(context.Context) error
}

func apply(ctx context.Context, cs kubernetes.Interface, o Objects, created *[]func(context.Context) error) error {
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	step := func(what string, get func() error, create, update func() error, remove func(context.Context) error) error {
		err := get()
		switch {
		case apierrors.IsNotFound(err):
			if err := create(); err != nil {
				return fmt.Errorf("create %s: %w", what, err)
			}
			*created = append(*created, remove)
			return nil
		case err != nil:
			return fmt.Errorf("read %s: %w", what, err)
		}
		if err := update(); err != nil {
			return fmt.Errorf("update %s: %w", what, err)
		}
		return nil
	}
	core, rbac, apps := cs.CoreV1(), cs.RbacV1(), cs.AppsV1()
	c, u, g := metav1.CreateOptions{}, metav1.UpdateOptions{}, metav1.GetOptions{}
	if err := step("namespace "+Namespace,
		func() error { _, err := core.Namespaces().Get(ctx, Namespace, g); return err },
		func() error { _, err := core.Namespaces().Create(ctx, o.Namespace, c); return err },
		func() error { return nil },
		func(ctx context.Context) error { return core.Namespaces().Delete(ctx, Namespace, del) }); err != nil {
		return err
	}
	steps := []stepSpec{
		{"service account",
			func() error { _, err := core.ServiceAccounts(Namespace).Get(ctx, Manager, g); return err },
			func() error { _, err := core.ServiceAccounts(Namespace).Create(ctx, o.ServiceAccount, c); return err },
			func() error { return nil },
			func(ctx context.Context) error { return core.ServiceAccounts(Namespace).Delete(ctx, Manager, del) }},
		{"cluster role",
			func() error { _, err := rbac.ClusterRoles().Get(ctx, Manager, g); return err },
			func() error { _, err := rbac.ClusterRoles().Create(ctx, o.ClusterRole, c); return err },
			func() error { _, err := rbac.ClusterRoles().Update(ctx, o.ClusterRole, u); return err },
			func(ctx context.Context) error { return rbac.ClusterRoles().Delete(ctx, Manager, del) }},
		{"cluster role binding",
			func() error { _, err := rbac.ClusterRoleBindings().Get(ctx, Manager, g); return err },
			func() error { _, err := rbac.ClusterRoleBindings().Create(ctx, o.ClusterRoleBinding, c); return err },
			func() error { _, err := rbac.ClusterRoleBindings().Update(ctx, o.ClusterRoleBinding, u); return err },
			func(ctx context.Context) error { return rbac.ClusterRoleBindings().Delete(ctx, Manager, del) }},
		{"deployment",
			func() error { _, err := apps.Deployments(Namespace).Get(ctx, Manager, g); return err },
			func() error { _, err := apps.Deployments(Namespace).Create(ctx, o.Deployment, c); return err },
			func() error { _, err := apps.Deployments(Namespace).Update(ctx, o.Deployment, u); return err },
			func(ctx context.Context) error { return apps.Deployments(Namespace).Delete(ctx, Manager, del) }},
		{"service",
			func() error { _, err := core.Services(Namespace).Get(ctx, Manager, g); return err },
			func() error { _, err := core.Services(Namespace).Create(ctx, o.Service, c); return err },
			func() error { // its ports; its address stays
				return retry.RetryOnConflict(retry.DefaultRetry, func() error {
					svc, err := core.Services(Namespace).Get(ctx, Manager, g)
					if err != nil {
						return err
					}
					svc.Spec.Ports, svc.Spec.Selector = o.Service.Spec.Ports, o.Service.Spec.Selector
					_, err = core.Services(Namespace).Update(ctx, svc, u)
					return err
				})
			},
			func(ctx context.Context) error { return core.Services(Namespace).Delete(ctx, Manager, del) }},
		{"client cluster role",
			func() error { _, err := rbac.ClusterRoles().Get(ctx, ClientRole, g); return err },
			func() error { _, err := rbac.ClusterRoles().Create(ctx, o.ClientClusterRole, c); return err },
			func() error { _, err := rbac.ClusterRoles().Update(ctx, o.ClientClusterRole, u); return err },
			func(ctx context.Context) error { return rbac.ClusterRoles().Delete(ctx, ClientRole, del) }},
		{"client role",
			func() error { _, err := rbac.Roles(Namespace).Get(ctx, ClientRole, g); return err },
			func() error { _, err := rbac.Roles(Namespace).Create(ctx, o.ClientRole, c); return err },
			func() error { _, err := rbac.Roles(Namespace).Update(ctx, o.ClientRole, u); return err },
			func(ctx context.Context) error { return rbac.Roles(Namespace).Delete(ctx, ClientRole, del) }},
	}
	if o.TLS != nil { // before the Deployment that mounts it
		i := slices.IndexFunc(steps, func(s stepSpec) bool { return s.what == "deployment" })
		steps = slices.Insert(steps, i, stepSpec{"the manager's key",
			func() error { _, err := core.Secrets(Namespace).Get(ctx, TLSSecret, g); return err },
			func() error { _, err := core.Secrets(Namespace).Create(ctx, o.TLS, c); return err },
			func() error { _, err := core.Secrets(Namespace).Update(ctx, o.TLS, u); return err },
			func(ctx context.Context) error { return core.Secrets(Namespace).Delete(ctx, TLSSecret, del) }})
	}
	steps = append(steps, wireGuardStep(ctx, cs, o))
	if o.NetworkPolicy != nil {
		np := cs.NetworkingV1().NetworkPolicies(Namespace)
		steps = append(steps, stepSpec{"the manager's network policy",
			func() error { _, err := np.Get(ctx, Manager, g); return err },
			func() error { _, err := np.Create(ctx, o.NetworkPolicy, c); return err },
			func() error { _, err := np.Update(ctx, o.NetworkPolicy, u); return err },
			func(ctx context.Context) error { return np.Delete(ctx, Manager, del) }})
	}
	// A cluster that does not serve ValidatingAdmissionPolicy (before
	// 1.30) gets no CSR policy.
	served, err := policiesServed(cs)
	if err != nil {
		return err
	}
	if served {
		adm := cs.AdmissionregistrationV1()
		steps = append(steps,
			stepSpec{"the CSR policy",
				func() error { _, err := adm.ValidatingAdmissionPolicies().Get(ctx, CSRPolicy, g); return err },
				func() error { _, err := adm.ValidatingAdmissionPolicies().Create(ctx, o.CSRPolicy, c); return err },
				func() error { // admission objects are updated at their resourceVersion only
					cur, err := adm.ValidatingAdmissionPolicies().Get(ctx, CSRPolicy, g)
					if err != nil {
						return err
					}
					o.CSRPolicy.ResourceVersion = cur.ResourceVersion
					_, err = adm.ValidatingAdmissionPolicies().Update(ctx, o.CSRPolicy, u)
					return err
				},
				func(ctx context.Context) error { return adm.ValidatingAdmissionPolicies().Delete(ctx, CSRPolicy, del) }},
			stepSpec{"the CSR policy's binding",
				func() error { _, err := adm.ValidatingAdmissionPolicyBindings().Get(ctx, CSRPolicy, g); return err },
				func() error {
					_, err := adm.ValidatingAdmissionPolicyBindings().Create(ctx, o.CSRPolicyBinding, c)
					return err
				},
				func() error {
					cur, err := adm.ValidatingAdmissionPolicyBindings().Get(ctx, CSRPolicy, g)
					if err != nil {
						return err
					}
					o.CSRPolicyBinding.ResourceVersion = cur.ResourceVersion
					_, err = adm.ValidatingAdmissionPolicyBindings().Update(ctx, o.CSRPolicyBinding, u)
					return err
				},
				func(ctx context.Context) error {
					return adm.ValidatingAdmissionPolicyBindings().Delete(ctx, CSRPolicy, del)
				}})
	}
	for _, s := range steps {
		if err := step(s.what, s.get, s.create, s.update, s.remove); err != nil {
			return err
		}
	}
	if o.ClientClusterRoleBinding != nil {
		if err := step("client cluster role binding",
			func() error { _, err := rbac.ClusterRoleBindings().Get(ctx, ClientRole, g); return err },
			func() error {
				_, err := rbac.ClusterRoleBindings().Create(ctx, o.ClientClusterRoleBinding, c)
				return err
			},
			func() error { return mergeClusterSubjects(ctx, cs, o) },
			func(ctx context.Context) error { return rbac.ClusterRoleBindings().Delete(ctx, ClientRole, del) }); err != nil {
			return err
		}
	}
	if o.ClientRoleBinding != nil {
		return step("client role binding",
			func() error { _, err := rbac.RoleBindings(Namespace).Get(ctx, ClientRole, g); return err },
			func() error { _, err := rbac.RoleBindings(Namespace).Create(ctx, o.ClientRoleBinding, c); return err },
			func() error { return mergeSubjects(ctx, cs, o) },
			func(ctx context.Context) error { return rbac.RoleBindings(Namespace).Delete(ctx, ClientRole, del) })
	}
	return nil
}

// mergeSubjects adds the newly allowed users and groups to those allowed
// before: a second install with --allow-user adds, it does not replace.
// wireGuardStep makes the WireGuard path's Service what o says: created,
// updated in place (its node port and address kept), remade when its type
// changes, or deleted when the path is off.
func wireGuardStep(ctx context.Context, cs kubernetes.Interface, o Objects) stepSpec {
	svcs := cs.CoreV1().Services(Namespace)
	g := metav1.GetOptions{}
	get := func() error { _, err := svcs.Get(ctx, WireGuardService, g); return err }
	remove := func(ctx context.Context) error { return svcs.Delete(ctx, WireGuardService, metav1.DeleteOptions{}) }
	want := o.WireGuardService
	if want == nil {
		none := func() error { return nil }
		return stepSpec{"the WireGuard service", get, none,
			func() error { return ignoreNotFound(remove(ctx)) }, func(context.Context) error { return nil }}
	}
	create := func() error { _, err := svcs.Create(ctx, want, metav1.CreateOptions{}); return err }
	update := func() error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			svc, err := svcs.Get(ctx, WireGuardService, g)
			if err != nil {
				return err
			}
			if svc.Spec.Type != want.Spec.Type {
				if err := remove(ctx); ignoreNotFound(err) != nil {
					return err
				}
				return create()
			}
			ports := slices.Clone(want.Spec.Ports)
			for i := range ports {
				for _, p := range svc.Spec.Ports {
					if p.Name == ports[i].Name {
						ports[i].NodePort = p.NodePort
					}
				}
			}
			svc.Spec.Ports, svc.Spec.Selector = ports, want.Spec.Selector
			_, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
			return err
		})
	}
	return stepSpec{"the WireGuard service", get, create, update, remove}
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func mergeSubjects(ctx context.Context, cs kubernetes.Interface, o Objects) error {
	rb, err := cs.RbacV1().RoleBindings(Namespace).Get(ctx, ClientRole, metav1.GetOptions{})
	if err != nil {
		return err
	}
	rb.Subjects = union(rb.Subjects, o.ClientRoleBinding.Subjects)
	_, err = cs.RbacV1().RoleBindings(Namespace).Update(ctx, rb, metav1.UpdateOptions{})
	return err
}

// mergeClusterSubjects is mergeSubjects for the cluster-wide binding.
func mergeClusterSubjects(ctx context.Context, cs kubernetes.Interface, o Objects) error {
	crb, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, ClientRole, metav1.GetOptions{})
	if err != nil {
		return err
	}
	crb.Subjects = union(crb.Subjects, o.ClientClusterRoleBinding.Subjects)
	_, err = cs.RbacV1().ClusterRoleBindings().Update(ctx, crb, metav1.UpdateOptions{})
	return err
}

func union(have, add []rbacv1.Subject) []rbacv1.Subject {
	seen := map[string]bool{}
	for _, s := range have {
		seen[s.Kind+"/"+s.Name] = true
	}
	for _, s := range add {
		if !seen[s.Kind+"/"+s.Name] {
			have = append(have, s)
		}
	}
	return have
}

// WaitReady waits until the manager's Deployment has a ready pod of its
// current spec. A pod that cannot start (its image cannot be had, it
// crashes) ends the wait at once with the pod's reason.
func WaitReady(ctx context.Context, cs kubernetes.Interface, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := d.Status
		last = fmt.Sprintf("%d of %d replicas ready", s.ReadyReplicas, *d.Spec.Replicas)
		if s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == *d.Spec.Replicas &&
			s.ReadyReplicas == *d.Spec.Replicas && s.Replicas == *d.Spec.Replicas {
			return true, nil
		}
		if reason := stuckPod(ctx, cs); reason != "" {
			return false, errors.New(reason)
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("the tunnel manager did not become ready (%s): %w", last, err)
	}
	return nil
}

// stuckPod names a manager pod that will not start without help.
func stuckPod(ctx context.Context, cs kubernetes.Interface) string {
	pods, err := cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + Manager})
	if err != nil {
		return ""
	}
	for i := range pods.Items {
		if r, permanent := rollout.PodTrouble(&pods.Items[i]); permanent {
			return r
		}
	}
	return ""
}

// Installed reports whether the manager's Deployment exists.
func Installed(ctx context.Context, cs kubernetes.Interface) (bool, error) {
	_, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	case apierrors.IsForbidden(err):
		return false, fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	return false, err
}

// Uninstall removes everything Install made: the namespace takes what is in
// it; the cluster-scoped role and binding go by name.
func Uninstall(ctx context.Context, cs kubernetes.Interface) error {
	if err := CheckAccess(ctx, cs, "delete"); err != nil {
		return err
	}
	var errs []error
	ignore := func(err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	ignore(cs.RbacV1().ClusterRoleBindings().Delete(ctx, Manager, metav1.DeleteOptions{}))
	ignore(cs.RbacV1().ClusterRoles().Delete(ctx, Manager, metav1.DeleteOptions{}))
	ignore(cs.RbacV1().ClusterRoleBindings().Delete(ctx, ClientRole, metav1.DeleteOptions{}))
	ignore(cs.RbacV1().ClusterRoles().Delete(ctx, ClientRole, metav1.DeleteOptions{}))
	ignore(cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, CSRPolicy, metav1.DeleteOptions{}))
	ignore(cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, CSRPolicy, metav1.DeleteOptions{}))
	ignore(cs.CoreV1().Namespaces().Delete(ctx, Namespace, metav1.DeleteOptions{}))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Wait for the namespace to go, so an install right after works.
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}
