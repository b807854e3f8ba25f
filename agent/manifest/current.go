package manifest

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"tunnel.dev/tunnel/release"
)

// Current reads the settings of the install in the cluster: its image,
// pull secrets, replicas and who may connect. It returns nil when nothing
// is installed.
func Current(ctx context.Context, cs kubernetes.Interface) (*Options, error) {
	d, err := cs.AppsV1().Deployments(Namespace).Get(ctx, Manager, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the tunnel manager: %w", err)
	}
	opt := &Options{Version: d.Labels[VersionLabel], SidecarMemory: d.Annotations[SidecarMemoryAnnotation],
		WireGuard: d.Annotations[WireGuardAnnotation], PreviewDomain: d.Annotations[PreviewDomainAnnotation]}
	if d.Spec.Replicas != nil {
		opt.Replicas = *d.Spec.Replicas
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "manager" {
			opt.Image = c.Image
			opt.Reach, opt.AlsoReach, opt.AllowHeaders = managerSettings(c.Args)
			if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
				opt.ManagerMemory = q.String()
			}
		}
	}
	for _, s := range d.Spec.Template.Spec.ImagePullSecrets {
		opt.PullSecrets = append(opt.PullSecrets, s.Name)
	}
	sec, err := cs.CoreV1().Secrets(Namespace).Get(ctx, TLSSecret, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("read the manager's key: %w", err)
	}
	if err == nil {
		opt.TLSCert, opt.TLSKey = sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]
	}
	rb, err := cs.RbacV1().RoleBindings(Namespace).Get(ctx, ClientRole, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("read who may connect: %w", err)
	}
	if err == nil {
		for _, s := range rb.Subjects {
			switch s.Kind {
			case rbacv1.UserKind:
				opt.AllowUsers = append(opt.AllowUsers, s.Name)
			case rbacv1.GroupKind:
				opt.AllowGroups = append(opt.AllowGroups, s.Name)
			}
		}
	}
	return opt, nil
}

// managerSettings reads the settings back from the manager's arguments.
func managerSettings(args []string) (reach string, also, headers []string) {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--reach":
			reach = args[i+1]
		case "--also-reach":
			also = append(also, args[i+1])
		case "--allow-header":
			headers = append(headers, args[i+1])
		}
	}
	return reach, also, headers
}

// RegistryOf is the registry prefix of an agent image named
// PREFIX/tunnel-agent[:TAG][@DIGEST], "" for any other name.
func RegistryOf(image string) string {
	ref, err := name.ParseReference(image)
	if err != nil {
		return ""
	}
	repo := ref.Context()
	path := repo.RepositoryStr()
	i := strings.LastIndex(path, "/")
	if path[i+1:] != release.AgentRepository {
		return ""
	}
	if i < 0 {
		return repo.RegistryStr()
	}
	return repo.RegistryStr() + "/" + path[:i]
}

// YAML is the install for opt as kubectl takes it: every object, in the
// order install creates them, as one stream of documents.
func YAML(opt Options) ([]byte, error) {
	o := Build(opt)
	objs := []runtime.Object{o.Namespace, o.ServiceAccount, o.ClusterRole, o.ClusterRoleBinding}
	if o.TLS != nil {
		objs = append(objs, o.TLS)
	}
	objs = append(objs, o.Deployment, o.Service)
	if o.WireGuardService != nil {
		objs = append(objs, o.WireGuardService)
	}
	if o.NetworkPolicy != nil {
		objs = append(objs, o.NetworkPolicy)
	}
	objs = append(objs, o.ClientClusterRole, o.ClientRole, o.CSRPolicy, o.CSRPolicyBinding)
	if o.ClientClusterRoleBinding != nil {
		objs = append(objs, o.ClientClusterRoleBinding)
	}
	if o.ClientRoleBinding != nil {
		objs = append(objs, o.ClientRoleBinding)
	}
	var out []byte
	for _, obj := range objs {
		gvks, _, err := scheme.Scheme.ObjectKinds(obj)
		if err != nil {
			return nil, err
		}
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, err
		}
		u["apiVersion"], u["kind"] = gvks[0].GroupVersion().String(), gvks[0].Kind
		delete(u, "status")
		if md, ok := u["metadata"].(map[string]any); ok {
			delete(md, "creationTimestamp")
		}
		if spec, ok := u["spec"].(map[string]any); ok {
			if tmpl, ok := spec["template"].(map[string]any); ok {
				if md, ok := tmpl["metadata"].(map[string]any); ok {
					delete(md, "creationTimestamp")
				}
			}
		}
		b, err := yaml.Marshal(u)
		if err != nil {
			return nil, err
		}
		out = append(out, "---\n"...)
		if obj == runtime.Object(o.TLS) {
			out = append(out, "# The manager's TLS key, made for this output: keep it out of Git (seal it), or let\n"+
				"# `tunnel install` make it in the cluster. Whoever holds it can pose as the manager to sidecars.\n"...)
		}
		out = append(out, b...)
	}
	return out, nil
}
