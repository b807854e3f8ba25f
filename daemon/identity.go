package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"strings"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// proveIdentity creates the CertificateSigningRequest that tells the
// manager, through the API server, which Kubernetes user this session is
// (see rpc.IdentitySigner), and returns its name and the request's key,
// with which Hello signs the session's challenge: whoever else reads the
// request cannot use it. The key lives only as long as the session's hello.
func proveIdentity(ctx context.Context, cs kubernetes.Interface) (string, ed25519.PrivateKey, error) {
	name := rpc.IdentityPrefix + strings.ToLower(rand.Text()[:20])
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return "", nil, err
	}
	csr := &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "tunnel"}},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:           pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName:        rpc.IdentitySigner,
			Usages:            []certv1.KeyUsage{certv1.UsageClientAuth},
			ExpirationSeconds: ptr.To(int32(600)),
		},
	}
	if _, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
		return "", nil, fmt.Errorf("create the proof of who you are for the manager: %w", err)
	}
	return name, key, nil
}
