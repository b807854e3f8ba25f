package rpc

// A laptop proves its Kubernetes user to the manager with a
// CertificateSigningRequest it creates with that user's credentials: the
// API server writes the requester into spec.username, which no client can
// set. The request is never signed; the manager reads and deletes it.
const (
	IdentitySigner = "tunnel.dev/session-identity" // spec.signerName of a proof
	IdentityPrefix = "tunnel-session-"             // its name, which is also its common name
)

// A request carrying ProbeHeader is answered by the sidecar itself, with
// SidecarHeader naming its pod: how the CLI sees that a Service's traffic
// has reached the sidecar (kube-proxy applies a new targetPort a moment
// after the API server has it).
const (
	ProbeHeader   = "X-Tunnel-Probe"
	SidecarHeader = "X-Tunnel-Sidecar"
	// ProbeHasHeader answers a probe whose value is an intercept's id:
	// "yes" once the sidecar has that intercept from the manager, else
	// "no". The CLI waits for it, so the first request after `tunnel
	// intercept` already goes to the laptop. (Sidecars before it do not
	// answer it, and the CLI does not wait for them.)
	ProbeHasHeader = "X-Tunnel-Probe-Has"
)

// SidecarAudience is the audience of the token a sidecar shows the manager.
const SidecarAudience = "tunnel.dev/manager"
