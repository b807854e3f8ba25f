package manifest

import (
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// CSRPolicy names the admission policy (and its binding) that holds the
// manager's rights on CertificateSigningRequests to tunnel's own: RBAC
// cannot say "only these", so the manager, which must read and delete the
// proofs laptops make, could otherwise delete any request in the cluster.
// ValidatingAdmissionPolicy is built into Kubernetes 1.30 and later; on an
// older cluster the install goes on without it, and says so.
const CSRPolicy = "tunnel-manager-csrs"

// csrPolicy is the policy and its binding.
func csrPolicy() (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding) {
	manager := fmt.Sprintf("system:serviceaccount:%s:%s", Namespace, Manager)
	p := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: meta(CSRPolicy, ""),
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update, admissionv1.Delete},
					Rule: admissionv1.Rule{APIGroups: []string{"certificates.k8s.io"}, APIVersions: []string{"*"},
						Resources: []string{"certificatesigningrequests", "certificatesigningrequests/approval", "certificatesigningrequests/status"}},
				},
			}}},
			Validations: []admissionv1.Validation{{
				Expression: fmt.Sprintf(`request.userInfo.username != %q || (request.operation == "DELETE" && oldObject.spec.signerName == %q)`,
					manager, rpc.IdentitySigner),
				Message: "the tunnel manager may only delete tunnel's session proofs (signer " + rpc.IdentitySigner + ")",
			}},
		},
	}
	b := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: meta(CSRPolicy, ""),
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        CSRPolicy,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
	return p, b
}
