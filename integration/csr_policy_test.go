//go:build e2e

package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	certv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tunnel.dev/tunnel/rpc"
)

// csrOf is a client certificate request for signer, deleted at the end of
// the test.
func csrOf(t *testing.T, name, signer string) *certv1.CertificateSigningRequest {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.Client.CertificatesV1().CertificateSigningRequests().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return &certv1.CertificateSigningRequest{TypeMeta: metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: signer, Usages: []certv1.KeyUsage{certv1.UsageClientAuth}}}
}

// The manager may read and delete CertificateSigningRequests, which RBAC
// cannot narrow to tunnel's: an admission policy holds it to tunnel's own.
// Tried as the manager's ServiceAccount (kubectl --as): another signer's
// request stays, a tunnel proof goes.
func TestTheManagerDeletesOnlyTunnelsCSRs(t *testing.T) {
	installManager(t)
	ctx := context.Background()
	as := "--as=system:serviceaccount:tunnel-system:tunnel-manager"
	mk := func(name, signer string) {
		t.Helper()
		if _, err := h.Client.CertificatesV1().CertificateSigningRequests().Create(ctx, csrOf(t, name, signer), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	other := "someone-elses-" + strings.ToLower(t.Name()[len(t.Name())-4:])
	mk(other, "kubernetes.io/kube-apiserver-client")
	mk(rpc.IdentityPrefix+"policytest", rpc.IdentitySigner)
	out, err := kubectl(ctx, node, "delete", "csr", other, as)
	if err == nil || !strings.Contains(out, "may only delete tunnel's session proofs") {
		t.Errorf("the manager deleting another signer's request: %v\n%s", err, out)
	}
	if _, err := h.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, other, metav1.GetOptions{}); err != nil {
		t.Errorf("another signer's request after the manager's attempt: %v", err)
	}
	if out, err := kubectl(ctx, node, "delete", "csr", rpc.IdentityPrefix+"policytest", as); err != nil {
		t.Errorf("the manager deleting a tunnel proof: %v\n%s", err, out)
	}
}

// tunnel's users must create CSRs, which RBAC cannot narrow to a signer:
// the same admission policy holds them to tunnel's. Tried as `dev` with
// kubectl: a request to the API server's client signer is refused in one
// sentence naming the grant that would allow it; tunnel's signer is fine;
// with that grant, the other signer is fine too.
func TestUsersAskOnlyTunnelsSigner(t *testing.T) {
	installManager(t, "--allow-user", "dev")
	ctx := context.Background()
	suffix := strings.ToLower(t.Name()[len(t.Name())-6:])
	create := func(name, signer string) (string, error) {
		t.Helper()
		b, err := json.Marshal(csrOf(t, name, signer))
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "csr.json")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return kubectl(ctx, node, "create", "-f", f, "--as=dev")
	}
	const apiSigner = "kubernetes.io/kube-apiserver-client"
	out, err := create("devs-own-"+suffix, apiSigner)
	if err == nil || !strings.Contains(out, "tunnel's users may create certificate requests for tunnel's signer only") ||
		!strings.Contains(out, "grant the verb request on certificates.k8s.io/signers "+apiSigner) {
		t.Errorf("dev asking the API server's client signer: %v\n%s", err, out)
	}
	if out, err := create(rpc.IdentityPrefix+"devtest-"+suffix, rpc.IdentitySigner); err != nil {
		t.Errorf("dev asking tunnel's signer: %v\n%s", err, out)
	}
	// The grant the refusal names lets dev ask that signer.
	name := "dev-may-ask-" + suffix
	rbac := h.Client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"},
			ResourceNames: []string{apiSigner}, Verbs: []string{"request"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbac.ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "dev"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbac.ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if out, err := create("devs-granted-"+suffix, apiSigner); err != nil {
		t.Errorf("dev asking the API server's client signer with the grant: %v\n%s", err, out)
	}
}
