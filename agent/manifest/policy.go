package manifest

import (
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// CSRPolicy names the admission policy (and its binding) that holds
// rights on CertificateSigningRequests to tunnel's own, where RBAC cannot
// say "only these": the manager, which must read and delete the proofs
// laptops make, could otherwise delete any request in the cluster; tunnel's
// users, who must create proofs, could otherwise ask any signer.
// ValidatingAdmissionPolicy is built into Kubernetes 1.30 and later; on an
// older cluster the install goes on without it, and says so.
const CSRPolicy = "tunnel-manager-csrs"

// SignerVerb is the verb on certificates.k8s.io/signers that marks who may
// create requests for a signer. tunnel's users' role grants it on tunnel's
// signer only; whoever holds it there is held to the signers they hold it
// on (an admin's "*" holds it everywhere). Nodes and bootstrap tokens are
// never held, so binding the role to system:authenticated cannot stop a
// kubelet's certificate rotation.
const SignerVerb = "request"

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
			}, {
				Expression: fmt.Sprintf(`request.operation != "CREATE" || object.spec.signerName == %[1]q ||
request.userInfo.groups.exists(g, g == "system:nodes" || g == "system:bootstrappers") ||
!authorizer.group("certificates.k8s.io").resource("signers").name(%[1]q).check(%[2]q).allowed() ||
authorizer.group("certificates.k8s.io").resource("signers").name(object.spec.signerName).check(%[2]q).allowed()`,
					rpc.IdentitySigner, SignerVerb),
				MessageExpression: fmt.Sprintf(`"tunnel's users may create certificate requests for tunnel's signer only; to ask " + object.spec.signerName + ", grant the verb %s on certificates.k8s.io/signers " + object.spec.signerName`, SignerVerb),
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
