package workload

import (
	"context"

	"encoding/json"
	"fmt"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// The apps and batch kinds go through the typed clientset, which every caller has
// (and tests fake); only Rollouts need the dynamic client, and a Client
// without one sees none.

func (c Client) get(ctx context.Context, k Kind, ns, name string) (*unstructured.Unstructured, error) {
	apps := c.CS.AppsV1()
	var obj runtime.Object
	var err error
	switch k.Name {
	case Deployment:
		obj, err = apps.Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	case StatefulSet:
		obj, err = apps.StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
	case DaemonSet:
		obj, err = apps.DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	case ReplicaSet:
		obj, err = apps.ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
	case Job:
		obj, err = c.CS.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
	case CronJob:
		obj, err = c.CS.BatchV1().CronJobs(ns).Get(ctx, name, metav1.GetOptions{})
	default:
		if c.Dyn == nil {
			return nil, apierrors.NewNotFound(k.Resource.GroupResource(), name)
		}
		return c.Dyn.Resource(k.Resource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, err
	}
	return toUnstructured(k, obj)
}

func (c Client) list(ctx context.Context, k Kind, ns string) ([]unstructured.Unstructured, error) {
	apps := c.CS.AppsV1()
	var objs []runtime.Object
	switch k.Name {
	case Deployment:
		l, err := apps.Deployments(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	case StatefulSet:
		l, err := apps.StatefulSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	case DaemonSet:
		l, err := apps.DaemonSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	case ReplicaSet:
		l, err := apps.ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	case Job:
		l, err := c.CS.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	case CronJob:
		l, err := c.CS.BatchV1().CronJobs(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		for i := range l.Items {
			objs = append(objs, &l.Items[i])
		}
	default:
		if c.Dyn == nil {
			return nil, nil
		}
		l, err := c.Dyn.Resource(k.Resource).Namespace(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	out := make([]unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		u, err := toUnstructured(k, o)
		if err != nil {
			return nil, err
		}
		out = append(out, *u)
	}
	return out, nil
}

// apply server-side applies data (JSON) to one workload.
func (c Client) apply(ctx context.Context, k Kind, ns, name string, data []byte, opts metav1.PatchOptions) (*unstructured.Unstructured, error) {
	apps := c.CS.AppsV1()
	var obj runtime.Object
	var err error
	switch k.Name {
	case Deployment:
		obj, err = apps.Deployments(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	case StatefulSet:
		obj, err = apps.StatefulSets(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	case DaemonSet:
		obj, err = apps.DaemonSets(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	case ReplicaSet:
		obj, err = apps.ReplicaSets(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	default:
		if c.Dyn == nil {
			return nil, apierrors.NewNotFound(k.Resource.GroupResource(), name)
		}
		return c.Dyn.Resource(k.Resource).Namespace(ns).Patch(ctx, name, types.ApplyPatchType, data, opts)
	}
	if err != nil {
		return nil, err
	}
	return toUnstructured(k, obj)
}

func toUnstructured(k Kind, obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(k.APIVersion())
	u.SetKind(k.Name)
	return u, nil
}

// put writes u back (an update, with its resourceVersion).
func (c Client) put(ctx context.Context, k Kind, u *unstructured.Unstructured, manager string) error {
	opts := metav1.UpdateOptions{FieldManager: manager}
	apps := c.CS.AppsV1()
	ns := u.GetNamespace()
	var err error
	switch k.Name {
	case Deployment:
		var o appsv1.Deployment
		if err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err == nil {
			_, err = apps.Deployments(ns).Update(ctx, &o, opts)
		}
	case StatefulSet:
		var o appsv1.StatefulSet
		if err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err == nil {
			_, err = apps.StatefulSets(ns).Update(ctx, &o, opts)
		}
	case DaemonSet:
		var o appsv1.DaemonSet
		if err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err == nil {
			_, err = apps.DaemonSets(ns).Update(ctx, &o, opts)
		}
	case ReplicaSet:
		var o appsv1.ReplicaSet
		if err = runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err == nil {
			_, err = apps.ReplicaSets(ns).Update(ctx, &o, opts)
		}
	default:
		if c.Dyn == nil {
			return apierrors.NewNotFound(k.Resource.GroupResource(), u.GetName())
		}
		_, err = c.Dyn.Resource(k.Resource).Namespace(ns).Update(ctx, u, opts)
	}
	return err
}

// patch sends a patch of type pt to one workload as manager.
func (c Client) patch(ctx context.Context, k Kind, ns, name string, pt types.PatchType, data []byte, manager string) error {
	opts := metav1.PatchOptions{FieldManager: manager}
	apps := c.CS.AppsV1()
	var err error
	switch k.Name {
	case Deployment:
		_, err = apps.Deployments(ns).Patch(ctx, name, pt, data, opts)
	case StatefulSet:
		_, err = apps.StatefulSets(ns).Patch(ctx, name, pt, data, opts)
	case DaemonSet:
		_, err = apps.DaemonSets(ns).Patch(ctx, name, pt, data, opts)
	case ReplicaSet:
		_, err = apps.ReplicaSets(ns).Patch(ctx, name, pt, data, opts)
	case Job:
		_, err = c.CS.BatchV1().Jobs(ns).Patch(ctx, name, pt, data, opts)
	case CronJob:
		_, err = c.CS.BatchV1().CronJobs(ns).Patch(ctx, name, pt, data, opts)
	default:
		if c.Dyn == nil {
			return apierrors.NewNotFound(k.Resource.GroupResource(), name)
		}
		_, err = c.Dyn.Resource(k.Resource).Namespace(ns).Patch(ctx, name, pt, data, opts)
	}
	return err
}

// JSONPatch applies RFC 6902 operations to w as manager.
func (c Client) JSONPatch(ctx context.Context, w *Workload, ops []map[string]any, manager string) error {
	k, _ := KindNamed(w.Kind)
	data, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	if err := c.patch(ctx, k, w.Namespace, w.Name, types.JSONPatchType, data, manager); err != nil {
		return fmt.Errorf("update %s: %w", w.Describe(), err)
	}
	return nil
}
