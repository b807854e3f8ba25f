package rpc

import (
	"crypto/sha256"
	"encoding/hex"
)

// A laptop proves its Kubernetes user to the manager with a
// CertificateSigningRequest it creates with that user's credentials: the
// API server writes the requester into spec.username, which no client can
// set. The request is never signed; the manager reads and deletes it.
const (
	IdentitySigner = "tunnel.dev/session-identity" // spec.signerName of a proof
	IdentityPrefix = "tunnel-session-"             // its name, which is also its common name
)

// ProofMessage is what a laptop signs with its proof's key to bind the proof
// to one session: the manager's nonce for that session and the proof's
// name. Anyone may read the request (whoever may list CSRs), but only the
// laptop that made it holds the key.
func ProofMessage(nonce []byte, proof string) []byte {
	msg := append([]byte("tunnel.dev/session-proof\x00"), nonce...)
	return append(msg, proof...)
}

// A request carrying ProbeHeader is answered by the sidecar itself, with
// SidecarHeader naming its pod: how the CLI sees that a Service's traffic
// has reached the sidecar (kube-proxy applies a new targetPort a moment
// after the API server has it).
const (
	ProbeHeader   = "X-Tunnel-Probe"
	SidecarHeader = "X-Tunnel-Sidecar"
	// ProbeHasHeader answers a probe whose value is an intercept's
	// ProbeToken: "yes" once the sidecar has that intercept from the
	// manager, else "no". The CLI waits for it, so the first request after
	// `tunnel intercept` already goes to the laptop. (Sidecars before it do
	// not answer it, and the CLI does not wait for them.) The probe comes
	// on the workload's own port, which anyone may reach: only a caller
	// who holds the intercept's token learns anything.
	ProbeHasHeader = "X-Tunnel-Probe-Has"
)

// ProbeToken is what a probe for an intercept shows: derived from its
// direct key, which only the owning laptop and the workload's sidecars
// have, so it names the intercept to them and to nobody else.
func ProbeToken(directKey []byte) string {
	if len(directKey) == 0 {
		return ""
	}
	sum := sha256.Sum256(append([]byte("tunnel.dev/probe\x00"), directKey...))
	return hex.EncodeToString(sum[:16])
}

// SidecarAudience is the audience of the token a sidecar shows the manager.
const SidecarAudience = "tunnel.dev/manager"
