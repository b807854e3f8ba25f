package workload

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// A field tunnel changes by update (a Service's targetPort, a replaced
// container's image) moves to tunnel's field manager, and stays its after
// tunnel puts the old value back: the owner's next server-side apply of a
// new value would then conflict with tunnel. Once tunnel has put an object
// back, its update entries are taken out of managedFields, so those
// fields belong to nobody and the owner's next apply takes them without a
// conflict. Its apply entries stay: those are parts it still holds.

// ForgetOps is the JSON patch that takes manager's update entries out of
// an object's managedFields, tested against its resourceVersion; nil when
// it has none (or nothing else would be left, which the API server would
// take as no change).
func ForgetOps(entries []metav1.ManagedFieldsEntry, resourceVersion, manager string) []map[string]any {
	kept, ok := WithoutUpdates(entries, manager)
	if !ok {
		return nil
	}
	return []map[string]any{
		{"op": "test", "path": "/metadata/resourceVersion", "value": resourceVersion},
		{"op": "replace", "path": "/metadata/managedFields", "value": kept},
	}
}

// forgetBackoff outlasts a controller writing status after a rollout,
// which moves the resourceVersion the patch tests.
var forgetBackoff = wait.Backoff{Steps: 8, Duration: 100 * time.Millisecond, Factor: 1.5, Jitter: 0.1}

// WithoutUpdates is entries without manager's update entries; false when
// it has none (or nothing else would be left, which the API server would
// take as no change).
func WithoutUpdates(entries []metav1.ManagedFieldsEntry, manager string) ([]metav1.ManagedFieldsEntry, bool) {
	kept := slices.DeleteFunc(slices.Clone(entries), func(e metav1.ManagedFieldsEntry) bool {
		return e.Manager == manager && e.Operation == metav1.ManagedFieldsOperationUpdate
	})
	return kept, len(kept) != len(entries) && len(kept) > 0
}

// Forget takes manager's update entries out of workload r's managedFields
// (see ForgetOps), unless keep says the workload as read again still
// holds what they own (tunnel changed it again meanwhile). A workload that
// is gone has none.
func (c Client) Forget(ctx context.Context, ns string, r Ref, manager string, keep func(*Workload) bool) error {
	k, ok := KindNamed(r.Kind)
	if !ok {
		return errors.New("unknown kind " + r.Kind)
	}
	// A failed test (changed meanwhile) comes back as an invalid patch:
	// read again and retry, as on a conflict.
	again := func(err error) bool { return !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) }
	return retry.OnError(forgetBackoff, again, func() error {
		u, err := c.get(ctx, k, ns, r.Name)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if w, err := fromObject(k, u); err != nil || keep(w) {
			return err
		}
		ops := ForgetOps(u.GetManagedFields(), u.GetResourceVersion(), manager)
		if ops == nil {
			return nil
		}
		data, err := json.Marshal(ops)
		if err != nil {
			return err
		}
		return c.patch(ctx, k, ns, r.Name, types.JSONPatchType, data, manager)
	})
}
