package workload

import (
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestForgetOps(t *testing.T) {
	entry := func(manager string, op metav1.ManagedFieldsOperationType) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op}
	}
	owner, ctl := entry("kubectl", metav1.ManagedFieldsOperationApply), entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate)
	mine, myApply := entry("tunnel-replace", metav1.ManagedFieldsOperationUpdate), entry("tunnel-replace", metav1.ManagedFieldsOperationApply)

	ops := ForgetOps([]metav1.ManagedFieldsEntry{owner, mine, ctl, myApply}, "42", "tunnel-replace")
	want := []map[string]any{
		{"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
		{"op": "replace", "path": "/metadata/managedFields", "value": []metav1.ManagedFieldsEntry{owner, ctl, myApply}},
	}
	if !reflect.DeepEqual(ops, want) {
		t.Errorf("ForgetOps = %v, want %v (its apply entry kept: a part it still holds)", ops, want)
	}
	if ops := ForgetOps([]metav1.ManagedFieldsEntry{owner, ctl}, "42", "tunnel-replace"); ops != nil {
		t.Errorf("nothing of the manager's: %v, want no patch", ops)
	}
	// An empty list would be taken as no change: left as it is.
	if ops := ForgetOps([]metav1.ManagedFieldsEntry{mine}, "42", "tunnel-replace"); ops != nil {
		t.Errorf("only the manager's: %v, want no patch", ops)
	}
}
