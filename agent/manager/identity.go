package manager

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/workload"
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
		var csr *certv1.CertificateSigningRequest
		err := retryTransient(ctx, 6*time.Second, func() (err error) {
			csr, err = csrs.Get(ctx, proof, metav1.GetOptions{})
			return err
		})
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

// retryTransient calls f until it succeeds, fails for good (the API server
// answered no), or within has passed: right after the API server restarts,
// the kubernetes Service has no endpoint for a few seconds, and a laptop
// reconnecting then must not end up unverified, its intercepts lost.
func retryTransient(ctx context.Context, within time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	wait := 100 * time.Millisecond
	for {
		err := f()
		if err == nil || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// transient says whether the API server might say otherwise if asked again.
func transient(err error) bool {
	switch {
	case apierrors.IsNotFound(err), apierrors.IsForbidden(err), apierrors.IsUnauthorized(err),
		apierrors.IsBadRequest(err), apierrors.IsInvalid(err), apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
		return false
	}
	return true
}

// sidecarVerifier checks that a token belongs to a running pod of
// namespace/workload that carries tunnel's sidecar; it returns a check to
// repeat while the sidecar's session lives (the pod may go, or change
// hands).
type sidecarVerifier func(ctx context.Context, token, namespace, workload string) (recheck func(context.Context) error, err error)

// podVerifier asks the API server whose token a sidecar shows (a
// pod-bound ServiceAccount token for rpc.SidecarAudience), then checks the
// pod itself (podOfWorkload): a pod that merely claims a workload reaches
// none of its laptops.
func podVerifier(wc workload.Client) sidecarVerifier {
	cs := wc.CS
	return func(ctx context.Context, token, namespace, name string) (func(context.Context) error, error) {
		ref, err := workload.ParseRef(name)
		if err != nil {
			return nil, err
		}
		if ref.String() != name {
			return nil, fmt.Errorf("the sidecar names its workload %q, which tunnel writes %q", name, ref.String())
		}
		if token == "" {
			return nil, errors.New("the sidecar showed no token")
		}
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{rpc.SidecarAudience}},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("review the sidecar's token: %w", err)
		}
		if !tr.Status.Authenticated {
			return nil, fmt.Errorf("the sidecar's token is not accepted: %s", tr.Status.Error)
		}
		if !strings.HasPrefix(tr.Status.User.Username, "system:serviceaccount:"+namespace+":") {
			return nil, fmt.Errorf("the sidecar's token is %s's, not a service account of namespace %s", tr.Status.User.Username, namespace)
		}
		names := tr.Status.User.Extra["authentication.kubernetes.io/pod-name"]
		if len(names) != 1 {
			return nil, errors.New("the sidecar's token is not bound to a pod")
		}
		var uid types.UID
		if uids := tr.Status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(uids) == 1 {
			uid = types.UID(uids[0])
		}
		check := func(ctx context.Context) error { return podOfWorkload(ctx, wc, namespace, names[0], uid, ref) }
		if err := check(ctx); err != nil {
			return nil, err
		}
		return check, nil
	}
}

// podOfWorkload checks that pod (of that UID, when known) is one of the
// workload's, beyond its ownerReferences, which anyone who may create pods
// can write: every controller link up to the workload by UID
// (workload.Client.PodTemplate); and its sidecar is the container tunnel
// injected, as the template that made the pod has it, the only one that
// mounts the token.
func podOfWorkload(ctx context.Context, wc workload.Client, namespace, name string, uid types.UID, ref workload.Ref) error {
	pod, err := wc.CS.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read the sidecar's pod: %w", err)
	}
	if uid != "" && uid != pod.UID {
		return fmt.Errorf("the sidecar's token is bound to an earlier pod named %s", pod.Name)
	}
	if pod.DeletionTimestamp != nil {
		return fmt.Errorf("pod %s is being deleted", pod.Name)
	}
	made, live, err := wc.PodTemplate(ctx, namespace, pod, ref)
	if err != nil {
		return err
	}
	return sameSidecar(pod, made, &live.Template)
}

// sameSidecar checks that the pod runs what the ReplicaSet's template
// says: each of the template's containers with its image, command and
// args (admission may add containers, such as a mesh's proxy, but none of
// them may mount the sidecar's token), no other volume with a token for
// the manager, and the template's choice of a shared process namespace
// (which would let another container read the sidecar's token).
func sameSidecar(pod *corev1.Pod, t, live *corev1.PodTemplateSpec) error {
	tmpl := t.Spec
	// The template that made the pod may be anyone's who may create
	// ReplicaSets or ControllerRevisions; the live one is the workload's.
	if !sameContainer(t, live, rpc.SidecarContainer) {
		return fmt.Errorf("pod %s does not run the sidecar its workload injects now", pod.Name)
	}
	if ptrTrue(tmpl.ShareProcessNamespace) != ptrTrue(live.Spec.ShareProcessNamespace) {
		return fmt.Errorf("pod %s shares its process namespace, unlike its workload", pod.Name)
	}
	if !slices.ContainsFunc(tmpl.Containers, func(c corev1.Container) bool { return c.Name == rpc.SidecarContainer }) {
		return fmt.Errorf("the template of pod %s has no tunnel sidecar", pod.Name)
	}
	for _, want := range tmpl.Containers {
		i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == want.Name })
		if i < 0 {
			return fmt.Errorf("pod %s lacks container %s of its template", pod.Name, want.Name)
		}
		got := pod.Spec.Containers[i]
		if got.Image != want.Image || !slices.Equal(got.Command, want.Command) || !slices.Equal(got.Args, want.Args) {
			if want.Name == rpc.SidecarContainer {
				return fmt.Errorf("pod %s does not run the sidecar its workload injects", pod.Name)
			}
			return fmt.Errorf("container %s of pod %s is not its template's", want.Name, pod.Name)
		}
	}
	for _, c := range slices.Concat(pod.Spec.Containers, pod.Spec.InitContainers, ephemeral(pod)) {
		if c.Name != rpc.SidecarContainer && mountsToken(c) {
			return fmt.Errorf("container %s of pod %s mounts the sidecar's token", c.Name, pod.Name)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name != rpc.SidecarTokenVolume && v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil && t.Audience == rpc.SidecarAudience {
					return fmt.Errorf("volume %s of pod %s holds a token for the manager", v.Name, pod.Name)
				}
			}
		}
	}
	if ptrTrue(pod.Spec.ShareProcessNamespace) != ptrTrue(tmpl.ShareProcessNamespace) {
		return fmt.Errorf("pod %s shares its process namespace, unlike its template", pod.Name)
	}
	return nil
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// sameContainer says whether templates a and b both have container name,
// with the same image, command and arguments.
func sameContainer(a, b *corev1.PodTemplateSpec, name string) bool {
	find := func(t *corev1.PodTemplateSpec) *corev1.Container {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == name {
				return &t.Spec.Containers[i]
			}
		}
		return nil
	}
	x, y := find(a), find(b)
	return x != nil && y != nil && x.Image == y.Image && slices.Equal(x.Command, y.Command) && slices.Equal(x.Args, y.Args)
}

func mountsToken(c corev1.Container) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == rpc.SidecarTokenVolume })
}

func ephemeral(pod *corev1.Pod) []corev1.Container {
	var out []corev1.Container
	for _, e := range pod.Spec.EphemeralContainers {
		out = append(out, corev1.Container(e.EphemeralContainerCommon))
	}
	return out
}
