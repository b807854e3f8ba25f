package manager

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rpc"
)

// identifier turns a session's proof of identity into its Kubernetes user.
type identifier func(ctx context.Context, proof string) (string, error)

// csrIdentifier reads a proof (a CertificateSigningRequest, rpc.IdentitySigner)
// and returns the user the API server recorded as its requester. The proof
// is deleted once read, so it serves one session only.
func csrIdentifier(cs kubernetes.Interface) identifier {
	return func(ctx context.Context, proof string) (string, error) {
		if !strings.HasPrefix(proof, rpc.IdentityPrefix) {
			return "", fmt.Errorf("proof %q is not a tunnel session proof", proof)
		}
		csrs := cs.CertificatesV1().CertificateSigningRequests()
		csr, err := csrs.Get(ctx, proof, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("read proof %s: %w", proof, err)
		}
		defer func() { _ = csrs.Delete(context.WithoutCancel(ctx), proof, metav1.DeleteOptions{}) }()
		if csr.Spec.SignerName != rpc.IdentitySigner {
			return "", fmt.Errorf("proof %s has signer %q", proof, csr.Spec.SignerName)
		}
		if age := time.Since(csr.CreationTimestamp.Time); age > 2*time.Minute {
			return "", fmt.Errorf("proof %s is %s old", proof, age.Round(time.Second))
		}
		block, _ := pem.Decode(csr.Spec.Request)
		if block == nil {
			return "", fmt.Errorf("proof %s holds no PEM request", proof)
		}
		req, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return "", fmt.Errorf("proof %s: %w", proof, err)
		}
		if req.Subject.CommonName != proof {
			return "", fmt.Errorf("proof %s names %q", proof, req.Subject.CommonName)
		}
		if csr.Spec.Username == "" {
			return "", errors.New("the API server recorded no requester")
		}
		return csr.Spec.Username, nil
	}
}
