package build

import (
	"encoding/pem"

	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// RootsPEM is the Mozilla (NSS) root certificates this build of tunnel
// carries, as a PEM bundle: what tunnel's own base trusts, the same on
// every machine, so the laptop's CAs (a company's TLS inspection, a
// developer's own) never reach the cluster and never change a digest.
// Roots NSS trusts only with constraints X.509 cannot say are left out.
func RootsPEM() []byte {
	var out []byte
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})...)
	}
	return out
}
