package manager

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rpc"
)

// Identity is a session's verified Kubernetes user, as the API server
// recorded it: what a SubjectAccessReview for the user needs.
type Identity struct {
	User   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// proofClaim is what a laptop's Hello shows: the name of its proof, the
// nonce the manager gave the session, and the laptop's signature over both
// by the key of the proof's request.
type proofClaim struct {
	Name      string
	Nonce     []byte
	Signature []byte
}

// identifier turns a session's proof of identity into its Kubernetes user.
type identifier func(ctx context.Context, claim proofClaim) (Identity, error)

// csrIdentifier reads a proof (a CertificateSigningRequest, rpc.IdentitySigner)
// and returns the user the API server recorded as its requester, once the
// claim's signature shows the caller holds the request's key: the request
// is readable by whoever may list CSRs, the key only by the laptop that
// made it. The proof is deleted once read, so it serves one session only.
func csrIdentifier(cs kubernetes.Interface) identifier {
	return func(ctx context.Context, claim proofClaim) (Identity, error) {
		proof := claim.Name
		if !strings.HasPrefix(proof, rpc.IdentityPrefix) {
			return Identity{}, fmt.Errorf("proof %q is not a tunnel session proof", proof)
		}
		csrs := cs.CertificatesV1().CertificateSigningRequests()
		csr, err := csrs.Get(ctx, proof, metav1.GetOptions{})
		if err != nil {
			return Identity{}, fmt.Errorf("read proof %s: %w", proof, err)
		}
		defer func() { _ = csrs.Delete(context.WithoutCancel(ctx), proof, metav1.DeleteOptions{}) }()
		if csr.Spec.SignerName != rpc.IdentitySigner {
			return Identity{}, fmt.Errorf("proof %s has signer %q", proof, csr.Spec.SignerName)
		}
		if age := time.Since(csr.CreationTimestamp.Time); age > 2*time.Minute {
			return Identity{}, fmt.Errorf("proof %s is %s old", proof, age.Round(time.Second))
		}
		block, _ := pem.Decode(csr.Spec.Request)
		if block == nil {
			return Identity{}, fmt.Errorf("proof %s holds no PEM request", proof)
		}
		req, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return Identity{}, fmt.Errorf("proof %s: %w", proof, err)
		}
		if req.Subject.CommonName != proof {
			return Identity{}, fmt.Errorf("proof %s names %q", proof, req.Subject.CommonName)
		}
		pub, ok := req.PublicKey.(ed25519.PublicKey)
		if !ok {
			return Identity{}, fmt.Errorf("proof %s has a %T key, not Ed25519", proof, req.PublicKey)
		}
		if len(claim.Nonce) == 0 || !ed25519.Verify(pub, rpc.ProofMessage(claim.Nonce, proof), claim.Signature) {
			return Identity{}, fmt.Errorf("the session did not sign its challenge with the key of proof %s", proof)
		}
		if csr.Spec.Username == "" {
			return Identity{}, errors.New("the API server recorded no requester")
		}
		id := Identity{User: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups}
		if len(csr.Spec.Extra) > 0 {
			id.Extra = map[string][]string{}
			for k, v := range csr.Spec.Extra {
				id.Extra[k] = v
			}
		}
		return id, nil
	}
}

// sidecarVerifier checks that a token belongs to a running pod of
// namespace/workload that carries the sidecar.
type sidecarVerifier func(ctx context.Context, token, namespace, workload string) error

// podVerifier asks the API server whose token a sidecar shows (a
// pod-bound ServiceAccount token for rpc.SidecarAudience) and follows the
// pod's owners up to the Deployment: a pod that merely claims a workload
// reaches none of its laptops.
func podVerifier(cs kubernetes.Interface) sidecarVerifier {
	return func(ctx context.Context, token, namespace, workload string) error {
		if token == "" {
			return errors.New("the sidecar showed no token")
		}
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{rpc.SidecarAudience}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("review the sidecar's token: %w", err)
		}
		if !tr.Status.Authenticated {
			return fmt.Errorf("the sidecar's token is not accepted: %s", tr.Status.Error)
		}
		if !strings.HasPrefix(tr.Status.User.Username, "system:serviceaccount:"+namespace+":") {
			return fmt.Errorf("the sidecar's token is %s's, not a service account of namespace %s", tr.Status.User.Username, namespace)
		}
		names := tr.Status.User.Extra["authentication.kubernetes.io/pod-name"]
		if len(names) != 1 {
			return errors.New("the sidecar's token is not bound to a pod")
		}
		pod, err := cs.CoreV1().Pods(namespace).Get(ctx, names[0], metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read the sidecar's pod: %w", err)
		}
		if uids := tr.Status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(uids) == 1 && uids[0] != string(pod.UID) {
			return fmt.Errorf("the sidecar's token is bound to an earlier pod named %s", pod.Name)
		}
		rs := metav1.GetControllerOf(pod)
		if rs == nil || rs.Kind != "ReplicaSet" {
			return fmt.Errorf("pod %s is not run by a ReplicaSet", pod.Name)
		}
		set, err := cs.AppsV1().ReplicaSets(namespace).Get(ctx, rs.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read the ReplicaSet of pod %s: %w", pod.Name, err)
		}
		if d := metav1.GetControllerOf(set); d == nil || d.Kind != "Deployment" || d.Name != workload {
			return fmt.Errorf("pod %s does not belong to deployment %s", pod.Name, workload)
		}
		return nil
	}
}
