package rpc

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
)

// SidecarSessionPort is where the manager serves sidecars, over TLS with
// the key the install made; sidecars are injected with its KeyPin. Laptops
// reach the manager's other port, which listens on the pod's loopback only,
// through a port-forward.
const SidecarSessionPort = 8023

// KeyPin names a certificate's key: "sha256:" and the hex SHA-256 of its
// SubjectPublicKeyInfo.
func KeyPin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
