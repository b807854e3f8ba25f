package manifest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"tunnel.dev/tunnel/rpc"
)

// The manager serves sidecars over TLS with a key of its own, made at
// install and kept in TLSSecret; sidecars are injected with the key's pin
// (KeyPinAnnotation on the Deployment), so whoever else answers the
// manager's name (a namespace deleted and made again, a spoofed DNS answer)
// gets no sidecar's session.
const (
	TLSSecret        = "tunnel-manager-tls"
	KeyPinAnnotation = "tunnel.dev/manager-key"
	tlsDir           = "/var/run/secrets/tunnel.dev/tls"
)

// NewTLS makes the manager's key and a self-signed certificate for it,
// PEM-encoded. Its validity is long: nothing but the pin is checked, and a
// new key means new sidecars.
func NewTLS() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: Manager + "." + Namespace},
		DNSNames:     []string{Manager + "." + Namespace, Manager + "." + Namespace + ".svc"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// KeyPin is the pin of a certificate's key: "sha256:" and the hex SHA-256
// of its SubjectPublicKeyInfo, as the sidecar checks it.
func KeyPin(certPEM []byte) (string, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return "", errors.New("the manager's certificate holds no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("the manager's certificate: %w", err)
	}
	return rpc.KeyPin(cert), nil
}
