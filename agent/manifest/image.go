package manifest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/release"
	"tunnel.dev/tunnel/version"
)

// RegistryEnv names the agent image's registry prefix when --registry does not.
const RegistryEnv = "TUNNEL_REGISTRY"

// ErrNoRegistry means nothing names where the agent image is.
var ErrNoRegistry = errors.New("this build of tunnel names no registry for the agent image: pass --registry HOST/PATH (where `make image REGISTRY=HOST/PATH` pushed it), set " + RegistryEnv + ", or name the image with --manager-image")

// AgentImage is the image an install runs: image when given (an exact
// reference), else REGISTRY/tunnel-agent:VERSION, with VERSION this CLI's
// own and REGISTRY the first of registry, $TUNNEL_REGISTRY and the
// registry this build was made with.
func AgentImage(image, registry string) (string, error) {
	if image != "" {
		return image, nil
	}
	r := RegistryPrefix(registry)
	if r == "" {
		return "", ErrNoRegistry
	}
	ref := release.AgentRef(r, version.Get().Version)
	if _, err := name.NewTag(ref, name.StrictValidation); err != nil {
		return "", fmt.Errorf("registry %q is not HOST[:PORT][/PATH]: %w", r, err)
	}
	return ref, nil
}

// RegistryPrefix is the first of registry, $TUNNEL_REGISTRY and the
// registry this build was made with; "" when none names one.
func RegistryPrefix(registry string) string {
	for _, r := range []string{registry, os.Getenv(RegistryEnv), version.Registry()} {
		if r = strings.TrimSuffix(strings.TrimSpace(r), "/"); r != "" {
			return r
		}
	}
	return ""
}

// Running is the agent image an installed manager runs.
type Running struct {
	Version     string // the image's version, when the install knew it (VersionLabel)
	Image       string // by digest when a ready pod of the current template shows it
	Tag         string // as the Deployment names it
	Digest      string // the digest that pod pulled, "" when none is ready
	PullSecrets []string
	// SidecarMemory is the sidecars' memory limit the install chose
	// ("" before installs said).
	SidecarMemory string
	// ManagerKey is the pin of the manager's TLS key for sidecars.
	ManagerKey string
	// PreviewDomain is the install's domain for preview URLs ("" for none).
	PreviewDomain string
}

// ReadRunning reads the installed manager's Deployment and pods, and
// returns RunningImage of them.
func ReadRunning(ctx context.Context, cs kubernetes.Interface) (Running, error) {
	d, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
	if err != nil {
		return Running{}, fmt.Errorf("read the tunnel manager's deployment (is it installed? `tunnel install`): %w", err)
	}
	pods, err := cs.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + Manager})
	if err != nil {
		return Running{}, fmt.Errorf("read the tunnel manager's pods: %w", err)
	}
	return RunningImage(d, pods.Items)
}

// RunningImage reads the manager's image from its Deployment, pinned to the
// digest a ready pod of the Deployment's current image pulled; an error
// when no ready pod runs it.
func RunningImage(d *appsv1.Deployment, pods []corev1.Pod) (Running, error) {
	r := Running{Version: d.Labels[VersionLabel], SidecarMemory: d.Annotations[SidecarMemoryAnnotation],
		ManagerKey: d.Annotations[KeyPinAnnotation], PreviewDomain: d.Annotations[PreviewDomainAnnotation]}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "manager" {
			r.Tag = c.Image
		}
	}
	if r.Tag == "" {
		return r, errors.New("the tunnel manager's deployment has no manager container")
	}
	for _, s := range d.Spec.Template.Spec.ImagePullSecrets {
		r.PullSecrets = append(r.PullSecrets, s.Name)
	}
	r.Image = r.Tag
	ref, err := name.ParseReference(r.Tag)
	if err != nil {
		return r, fmt.Errorf("the tunnel manager's image %q: %w", r.Tag, err)
	}
	if _, ok := ref.(name.Digest); ok {
		return r, nil
	}
	for _, p := range pods {
		// The pod's spec names the image as the template did; its status
		// may name another tag of the same digest.
		if !slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == "manager" && sameImage(c.Image, r.Tag) }) {
			continue
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name != "manager" || !cs.Ready {
				continue
			}
			if _, digest, ok := strings.Cut(cs.ImageID, "@"); ok && strings.HasPrefix(digest, "sha256:") {
				r.Image, r.Digest = ref.Context().Digest(digest).String(), digest
				return r, nil
			}
		}
	}
	// Without a ready pod of its image the digest is unknown, and the tag
	// may name an image no node can pull (a failed upgrade): nothing is
	// added with it.
	return r, fmt.Errorf("the tunnel manager has no ready pod of its image %s: see `kubectl -n %s get pods`", r.Tag, Namespace)
}

// sameImage compares two image names as the runtime may normalise them
// (docker.io/library/x:1 is x:1).
func sameImage(a, b string) bool {
	ra, err1 := name.ParseReference(a)
	rb, err2 := name.ParseReference(b)
	return err1 == nil && err2 == nil && ra.Name() == rb.Name()
}
