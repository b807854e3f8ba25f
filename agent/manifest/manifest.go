// Package manifest is what `tunnel install` puts in a cluster: the manager's
// Deployment, Service, ServiceAccount and least-privilege RBAC in namespace
// tunnel-system, and the role a user needs to connect.
package manifest

import (
	"fmt"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"tunnel.dev/tunnel/rpc"
)

// Names of what is installed.
const (
	Namespace   = "tunnel-system"
	Manager     = "tunnel-manager"
	ClientRole  = "tunnel-client" // what a user needs to connect
	SessionPort = 8022
	// VersionLabel on the manager's Deployment is its image's version,
	// when the install knew it (not for an exact --manager-image).
	VersionLabel = "app.kubernetes.io/version"
	MetricsPort  = 9090
	// WireGuardPort is the manager's UDP port for laptops' WireGuard
	// path, exposed by the WireGuardService.
	WireGuardPort    = 51820
	WireGuardService = "tunnel-manager-wireguard"
)

// How the WireGuard path is exposed (Options.WireGuard).
const (
	WireGuardNodePort     = "nodeport"     // a NodePort Service: laptops that reach a node's address
	WireGuardLoadBalancer = "loadbalancer" // a LoadBalancer Service: the cluster's load balancer
	WireGuardOff          = "off"          // no WireGuard path: every byte takes the port-forward
)

// ParseWireGuard checks an install's --wireguard value.
func ParseWireGuard(s string) (string, error) {
	switch s {
	case "", WireGuardNodePort:
		return WireGuardNodePort, nil
	case WireGuardLoadBalancer, WireGuardOff:
		return s, nil
	}
	return "", fmt.Errorf("--wireguard %q: want %s, %s or %s", s, WireGuardNodePort, WireGuardLoadBalancer, WireGuardOff)
}

// Options shape an install.
type Options struct {
	Image       string // the agent image (AgentImage): required
	Version     string // the image's version, when known: VersionLabel
	PullSecrets []string
	AllowUsers  []string
	AllowGroups []string
	Replicas    int32
	PullPolicy  corev1.PullPolicy
	// Reach is the manager's rule for what laptops may dial ("" means its
	// default, namespaces); AlsoReach are CIDRs outside the cluster every
	// verified user may dial.
	Reach     string
	AlsoReach []string
	// ManagerMemory and SidecarMemory are the containers' memory limits
	// ("" for DefaultManagerMemory, DefaultSidecarMemory): the manager's
	// stream caps keep it well within its own.
	ManagerMemory string
	SidecarMemory string
	// TLSCert and TLSKey are the manager's certificate and key for its
	// sidecar port (NewTLS), kept across installs.
	TLSCert, TLSKey []byte
	// AllowHeaders are the header names (a trailing * for a prefix)
	// personal intercepts may match on; none means the manager's default.
	AllowHeaders []string
	// WireGuard is how laptops reach the manager's WireGuard port:
	// WireGuardNodePort ("" too), WireGuardLoadBalancer or WireGuardOff.
	WireGuard string
	// PreviewDomain is the domain preview URLs take their host names
	// under (intercept --preview): NAME.DOMAIN; "" for none.
	PreviewDomain string
}

// Memory limits by default, and the annotation on the manager's Deployment
// that tells intercepts the sidecar's.
const (
	DefaultManagerMemory    = "1Gi"
	DefaultSidecarMemory    = "256Mi"
	SidecarMemoryAnnotation = "tunnel.dev/sidecar-memory"
	// WireGuardAnnotation on the manager's Deployment keeps the install's
	// --wireguard, so an upgrade keeps it too.
	WireGuardAnnotation = "tunnel.dev/wireguard"
	// PreviewDomainAnnotation on the manager's Deployment keeps the
	// install's preview domain, which intercepts read.
	PreviewDomainAnnotation = "tunnel.dev/preview-domain"
)

// Resources are a tunnel container's: a small request (tunnel idles most
// of the time) and a memory limit, with GOMEMLIMIT set from it so the Go
// runtime collects before the kernel kills.
func Resources(cpu, memory, limit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(limit)},
	}
}

// MemLimitEnv is GOMEMLIMIT from the container's own memory limit.
func MemLimitEnv(container string) corev1.EnvVar {
	return corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
		ContainerName: container, Resource: "limits.memory"}}}
}

// Labels mark every object tunnel installs, so uninstall finds them all.
func Labels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":       Manager,
		"app.kubernetes.io/part-of":    "tunnel",
		"app.kubernetes.io/managed-by": "tunnel",
	}
}

func meta(name, ns string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: Labels()}
}

// Objects are the install, in the order to create them.
type Objects struct {
	Namespace          *corev1.Namespace
	ServiceAccount     *corev1.ServiceAccount
	ClusterRole        *rbacv1.ClusterRole
	ClusterRoleBinding *rbacv1.ClusterRoleBinding
	Deployment         *appsv1.Deployment
	Service            *corev1.Service
	// NetworkPolicy admits to the manager's pod only the sidecars' port,
	// metrics, and from anywhere the WireGuard port; laptops' sessions come
	// through port-forwards, which arrive on the pod's loopback and no
	// policy sees. Nil without the manager's key.
	NetworkPolicy     *networkingv1.NetworkPolicy
	ClientRole        *rbacv1.Role
	ClientRoleBinding *rbacv1.RoleBinding // nil when nobody is allowed
	// A connecting user proves who they are to the manager with a
	// CertificateSigningRequest, whose requester the API server records.
	ClientClusterRole        *rbacv1.ClusterRole
	ClientClusterRoleBinding *rbacv1.ClusterRoleBinding // nil when nobody is allowed
	// TLS holds the manager's key for its sidecar port; nil without one.
	TLS *corev1.Secret
	// WireGuardService exposes the manager's UDP port to laptops; nil when
	// the WireGuard path is off.
	WireGuardService *corev1.Service
	// CSRPolicy and CSRPolicyBinding hold the manager to tunnel's CSRs.
	CSRPolicy        *admissionv1.ValidatingAdmissionPolicy
	CSRPolicyBinding *admissionv1.ValidatingAdmissionPolicyBinding
}

// Build returns the objects for opt.
func Build(opt Options) Objects {
	if opt.Replicas == 0 {
		opt.Replicas = 1
	}
	if opt.PullPolicy == "" {
		opt.PullPolicy = corev1.PullIfNotPresent
	}
	if opt.ManagerMemory == "" {
		opt.ManagerMemory = DefaultManagerMemory
	}
	if opt.SidecarMemory == "" {
		opt.SidecarMemory = DefaultSidecarMemory
	}
	selector := map[string]string{"app.kubernetes.io/name": Manager}
	o := Objects{
		Namespace:      &corev1.Namespace{ObjectMeta: meta(Namespace, "")},
		ServiceAccount: &corev1.ServiceAccount{ObjectMeta: meta(Manager, Namespace)},
		// The manager watches what a laptop must route (nodes' podCIDRs,
		// ServiceCIDRs, pods as a fallback) and resolve (namespaces).
		ClusterRole: &rbacv1.ClusterRole{
			ObjectMeta: meta(Manager, ""),
			Rules: []rbacv1.PolicyRule{
				// Pods and Services also tell the namespace of an address a
				// laptop dials; nodes' addresses and the API server's
				// endpoints are never dialed.
				{APIGroups: []string{""}, Resources: []string{"nodes", "namespaces", "pods", "services"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"servicecidrs"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
				// Asks what a session's user may: intercepts, and which
				// namespaces' addresses the session reaches.
				{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
				// Reads a session's proof of identity, then deletes it.
				{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"get", "delete"}},
				// Checks that a sidecar is one of its workload's pods.
				{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
				// What a sidecar's pod is checked against: the chain of
				// controllers up to its workload, of every kind.
				{APIGroups: []string{"apps"}, Resources: []string{"replicasets", "deployments", "statefulsets", "daemonsets", "controllerrevisions"}, Verbs: []string{"get"}},
				{APIGroups: []string{"argoproj.io"}, Resources: []string{"rollouts"}, Verbs: []string{"get"}},
			},
		},
		ClusterRoleBinding: &rbacv1.ClusterRoleBinding{
			ObjectMeta: meta(Manager, ""),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: Manager},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Manager, Namespace: Namespace}},
		},
		Deployment: &appsv1.Deployment{
			ObjectMeta: deploymentMeta(opt),
			Spec: appsv1.DeploymentSpec{
				Replicas: &opt.Replicas,
				Selector: &metav1.LabelSelector{MatchLabels: selector},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: Labels()},
					Spec: corev1.PodSpec{
						ServiceAccountName:            Manager,
						ImagePullSecrets:              pullSecrets(opt.PullSecrets),
						TerminationGracePeriodSeconds: ptr.To(int64(5)),
						SecurityContext: &corev1.PodSecurityContext{
							RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)), FSGroup: ptr.To(int64(65532)),
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
						Containers: []corev1.Container{{
							Name:            "manager",
							Image:           opt.Image,
							ImagePullPolicy: opt.PullPolicy,
							Args:            managerArgs(opt),
							Env:             []corev1.EnvVar{MemLimitEnv("manager")},
							Resources:       Resources("50m", "64Mi", opt.ManagerMemory),
							Ports: []corev1.ContainerPort{
								{Name: "session", ContainerPort: SessionPort},
								{Name: "metrics", ContainerPort: MetricsPort},
							},
							ReadinessProbe: &corev1.Probe{
								ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("metrics")}},
								PeriodSeconds: 2,
							},
							SecurityContext: &corev1.SecurityContext{
								AllowPrivilegeEscalation: ptr.To(false),
								ReadOnlyRootFilesystem:   ptr.To(true),
								Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							},
						}},
					},
				},
			},
		},
		Service: &corev1.Service{
			ObjectMeta: meta(Manager, Namespace),
			Spec: corev1.ServiceSpec{
				Selector: selector,
				Ports: []corev1.ServicePort{
					{Name: "session", Port: SessionPort, TargetPort: intstr.FromString("session")},
					{Name: "metrics", Port: MetricsPort, TargetPort: intstr.FromString("metrics")},
				},
			},
		},
		// A user who may connect may find the manager's pod and forward a
		// port to it, and nothing more.
		ClientRole: &rbacv1.Role{
			ObjectMeta: meta(ClientRole, Namespace),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"get", "create"}},
				{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, ResourceNames: []string{Manager}, Verbs: []string{"get"}},
			},
		},
	}
	var subjects []rbacv1.Subject
	for _, u := range opt.AllowUsers {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: u})
	}
	for _, g := range opt.AllowGroups {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: g})
	}
	o.ClientClusterRole = &rbacv1.ClusterRole{
		ObjectMeta: meta(ClientRole, ""),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"}, Verbs: []string{"create"}},
			// Marks the holder as one the CSR policy keeps to tunnel's signer.
			{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{rpc.IdentitySigner}, Verbs: []string{SignerVerb}},
		},
	}
	if len(subjects) > 0 {
		o.ClientClusterRoleBinding = &rbacv1.ClusterRoleBinding{
			ObjectMeta: meta(ClientRole, ""),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ClientRole},
			Subjects:   subjects,
		}
		o.ClientRoleBinding = &rbacv1.RoleBinding{
			ObjectMeta: meta(ClientRole, Namespace),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: ClientRole},
			Subjects:   subjects,
		}
	}
	if len(opt.TLSCert) > 0 {
		addTLS(&o, opt)
	}
	if wg, _ := ParseWireGuard(opt.WireGuard); wg != WireGuardOff {
		addWireGuard(&o, wg)
	}
	o.CSRPolicy, o.CSRPolicyBinding = csrPolicy()
	return o
}

// addTLS gives the manager its key for the sidecar port: a Secret,
// mounted, its pin on the Deployment for intercepts to inject, and the
// Service's sidecar port in place of the loopback-only one.
func addTLS(o *Objects, opt Options) {
	o.TLS = &corev1.Secret{ObjectMeta: meta(TLSSecret, Namespace), Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: opt.TLSCert, corev1.TLSPrivateKeyKey: opt.TLSKey}}
	if pin, err := KeyPin(opt.TLSCert); err == nil {
		o.Deployment.Annotations[KeyPinAnnotation] = pin
	}
	spec := &o.Deployment.Spec.Template.Spec
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "tls", VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{SecretName: TLSSecret, DefaultMode: ptr.To(int32(0o440))}}})
	c := &spec.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "tls", MountPath: tlsDir, ReadOnly: true})
	c.Ports = []corev1.ContainerPort{
		{Name: "sidecars", ContainerPort: rpc.SidecarSessionPort},
		{Name: "metrics", ContainerPort: MetricsPort},
	}
	o.Service.Spec.Ports = []corev1.ServicePort{
		{Name: "sidecars", Port: rpc.SidecarSessionPort, TargetPort: intstr.FromString("sidecars")},
		{Name: "metrics", Port: MetricsPort, TargetPort: intstr.FromString("metrics")},
	}
	anyPod := []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}
	tcp := corev1.ProtocolTCP
	o.NetworkPolicy = &networkingv1.NetworkPolicy{ObjectMeta: meta(Manager, Namespace),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *o.Deployment.Spec.Selector,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: anyPod, Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: &tcp, Port: ptr.To(intstr.FromString("sidecars"))},
				{Protocol: &tcp, Port: ptr.To(intstr.FromString("metrics"))},
			}}},
		}}
}

// addWireGuard opens the manager's UDP port for laptops' WireGuard path
// and exposes it with a Service of the kind asked for. WireGuard answers
// nothing to a key the manager did not admit for a live session.
func addWireGuard(o *Objects, kind string) {
	c := &o.Deployment.Spec.Template.Spec.Containers[0]
	c.Ports = append(c.Ports, corev1.ContainerPort{Name: "wireguard", ContainerPort: WireGuardPort, Protocol: corev1.ProtocolUDP})
	c.Args = append(c.Args, "--wireguard-port", fmt.Sprint(WireGuardPort),
		"--wireguard-service", Namespace+"/"+WireGuardService)
	typ := corev1.ServiceTypeNodePort
	if kind == WireGuardLoadBalancer {
		typ = corev1.ServiceTypeLoadBalancer
	}
	o.WireGuardService = &corev1.Service{
		ObjectMeta: meta(WireGuardService, Namespace),
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: o.Deployment.Spec.Selector.MatchLabels,
			Ports: []corev1.ServicePort{{Name: "wireguard", Protocol: corev1.ProtocolUDP,
				Port: WireGuardPort, TargetPort: intstr.FromString("wireguard")}},
		},
	}
	if o.NetworkPolicy != nil {
		// Laptops come from outside the cluster: from any source.
		udp := corev1.ProtocolUDP
		o.NetworkPolicy.Spec.Ingress = append(o.NetworkPolicy.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr.To(intstr.FromString("wireguard"))}}})
	}
}

func managerArgs(opt Options) []string {
	args := []string{"manager"}
	if len(opt.TLSCert) > 0 {
		// Laptops come through port-forwards, which the kubelet opens on
		// the pod's loopback: nothing on the network reaches that port.
		args = append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", SessionPort),
			"--sidecar-listen", fmt.Sprintf(":%d", rpc.SidecarSessionPort),
			"--tls-cert", tlsDir+"/tls.crt", "--tls-key", tlsDir+"/tls.key")
	}
	if opt.Reach != "" {
		args = append(args, "--reach", opt.Reach)
	}
	for _, c := range opt.AlsoReach {
		args = append(args, "--also-reach", c)
	}
	for _, h := range opt.AllowHeaders {
		args = append(args, "--allow-header", h)
	}
	return args
}

func pullSecrets(names []string) []corev1.LocalObjectReference {
	var refs []corev1.LocalObjectReference
	for _, n := range names {
		refs = append(refs, corev1.LocalObjectReference{Name: n})
	}
	return refs
}

func deploymentMeta(opt Options) metav1.ObjectMeta {
	version := opt.Version
	m := meta(Manager, Namespace)
	wg, _ := ParseWireGuard(opt.WireGuard)
	m.Annotations = map[string]string{SidecarMemoryAnnotation: opt.SidecarMemory, WireGuardAnnotation: wg}
	if opt.PreviewDomain != "" {
		m.Annotations[PreviewDomainAnnotation] = opt.PreviewDomain
	}
	if version != "" {
		m.Labels[VersionLabel] = version
	}
	return m
}
