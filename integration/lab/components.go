//go:build linux

package lab

import (
	"bytes"
	"embed"
	"fmt"
	"path/filepath"
	"text/template"
	"time"
)

//go:embed config/*
var configFiles embed.FS

// templateData is what the config templates see.
type templateData struct {
	Config
	Paths
	NodeAddr      string
	NodeName      string
	DNSServiceIP  string
	PodSubnet     string // the node's podCIDR, once the controller-manager gave it one
	Socket        string // containerd's socket
	PauseImage    string
	CoreDNSImage  string
	UpstreamZone  string
	UpstreamHosts string
	// The lab's registry.
	RegistryHost     string
	RegistryPort     int
	RegistryBackPort int
	RegistryService  string
	RegistryIssuer   string
}

func newTemplateData(p Paths, cfg Config) templateData {
	return templateData{
		Config:       cfg,
		Paths:        p,
		NodeAddr:     nodeAddr.String(),
		NodeName:     nodeName,
		DNSServiceIP: cfg.DNSServiceIP().String(),
		Socket:       p.containerdSocket(),
		PauseImage:   PauseImage,
		CoreDNSImage: CoreDNSImage,
		UpstreamZone: upstreamZone,
		RegistryHost: RegistryHost(), RegistryPort: registryPort, RegistryBackPort: registryBackPort,
		RegistryService: registryService, RegistryIssuer: registryIssuer,
	}
}

// render fills a template from config/ with the lab's values.
func render(name string, d templateData) ([]byte, error) {
	t, err := template.ParseFS(configFiles, "config/"+name)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

func (p Paths) containerdSocket() string { return p.state("containerd", "containerd.sock") }
func (p Paths) pki(name string) string   { return p.state("pki", name) }
func (p Paths) kubeconfig(name string) string {
	return p.state("kubeconfig", name+".conf")
}

func (p Paths) kube(cmd string) string { return filepath.Join(p.KubernetesBin(), cmd) }

// configFilesFor lists the files each part reads, rendered into the state
// folder before the parts start.
var nodeConfigFiles = map[string]string{
	"containerd.toml":   "containerd/config.toml",
	"kubelet.yaml":      "kubelet/config.yaml",
	"kube-proxy.yaml":   "kube-proxy/config.yaml",
	"resolv.conf":       "kubelet/resolv.conf",
	"upstream.Corefile": "upstream-dns/Corefile",
	"upstream.hosts":    "upstream-dns/hosts",
	"prometheus.yml":    "prometheus/prometheus.yml",
	"registry.yml":      "registry/config.yml",
}

// components lists the node's processes in the order they start; down
// stops them in reverse.
func components(p Paths, cfg Config) []component {
	etcd := filepath.Join(p.Cache, "etcd-"+EtcdVersion, "etcd")
	coredns := filepath.Join(p.Cache, "coredns-"+CoreDNSVersion, "coredns")
	apiURL := fmt.Sprintf("https://%s:6443", nodeAddr)
	kubeconfigFlags := func(name string) []string {
		k := p.kubeconfig(name)
		return []string{"--kubeconfig=" + k, "--authentication-kubeconfig=" + k, "--authorization-kubeconfig=" + k}
	}
	return append(registryComponents(p), []component{
		{
			name: "etcd", bin: etcd, inNode: true,
			args: []string{
				"--name=lab", "--data-dir=" + p.state("etcd"),
				"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
				"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
				"--initial-cluster=lab=http://127.0.0.1:2380",
				"--unsafe-no-fsync", // a test cluster: speed over durability
				"--log-level=warn",
			},
			ready: httpProbe("http://127.0.0.1:2379/health"),
		},
		{
			name: "kube-apiserver", bin: p.kube("kube-apiserver"), inNode: true,
			args: []string{
				"--etcd-servers=http://127.0.0.1:2379",
				"--advertise-address=" + nodeAddr.String(), "--bind-address=0.0.0.0", "--secure-port=6443",
				"--service-cluster-ip-range=" + cfg.ServiceCIDR,
				"--client-ca-file=" + p.pki("ca.crt"),
				"--tls-cert-file=" + p.pki("apiserver.crt"), "--tls-private-key-file=" + p.pki("apiserver.key"),
				"--kubelet-client-certificate=" + p.pki("apiserver-kubelet-client.crt"),
				"--kubelet-client-key=" + p.pki("apiserver-kubelet-client.key"),
				// The node's name does not resolve; port-forward and exec need its address.
				"--kubelet-preferred-address-types=InternalIP",
				"--service-account-issuer=https://kubernetes.default.svc." + cfg.ClusterDomain,
				"--service-account-key-file=" + p.pki("sa.pub"),
				"--service-account-signing-key-file=" + p.pki("sa.key"),
				"--authorization-mode=Node,RBAC", "--allow-privileged=true",
				"--enable-admission-plugins=NodeRestriction",
				"--profiling=false", "--v=0",
			},
			ready:   httpProbe(apiURL + "/readyz"),
			timeout: 90 * time.Second,
		},
		{
			name: "kube-controller-manager", bin: p.kube("kube-controller-manager"), inNode: true,
			args: append(kubeconfigFlags("controller-manager"),
				"--bind-address=127.0.0.1", "--leader-elect=false",
				// Without it the Deployment controller may not create ReplicaSets.
				"--use-service-account-credentials=true",
				"--root-ca-file="+p.pki("ca.crt"),
				"--service-account-private-key-file="+p.pki("sa.key"),
				"--cluster-signing-cert-file="+p.pki("ca.crt"), "--cluster-signing-key-file="+p.pki("ca.key"),
				"--allocate-node-cidrs=true", "--cluster-cidr="+cfg.PodCIDR, "--node-cidr-mask-size=24",
				"--service-cluster-ip-range="+cfg.ServiceCIDR,
				"--profiling=false",
			),
			ready: httpProbe("https://127.0.0.1:10257/healthz"),
		},
		{
			name: "kube-scheduler", bin: p.kube("kube-scheduler"), inNode: true,
			args: append(kubeconfigFlags("scheduler"),
				"--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"),
			ready: httpProbe("https://127.0.0.1:10259/healthz"),
		},
		{
			name: "containerd", bin: "/usr/bin/containerd", inNode: true,
			args:  []string{"--config=" + p.state("containerd", "config.toml")},
			ready: criReady(p),
		},
		{
			name: "kubelet", bin: p.kube("kubelet"), inNode: true,
			args: []string{
				"--config=" + p.state("kubelet", "config.yaml"),
				"--kubeconfig=" + p.kubeconfig("kubelet"),
				"--hostname-override=" + nodeName, "--node-ip=" + nodeAddr.String(),
				"--root-dir=" + p.state("kubelet", "root"), "--cert-dir=" + p.state("kubelet", "pki"),
			},
			ready:   httpProbe("http://127.0.0.1:10248/healthz"),
			timeout: 90 * time.Second,
		},
		{
			name: "kube-proxy", bin: p.kube("kube-proxy"), inNode: true,
			args:  []string{"--config=" + p.state("kube-proxy", "config.yaml")},
			ready: httpProbe("http://127.0.0.1:10256/livez"),
		},
		{
			name: "upstream-dns", bin: coredns, inNode: true,
			args:  []string{"-conf=" + p.state("upstream-dns", "Corefile")},
			ready: probe("dig", "+time=1", "+tries=1", "@"+nodeAddr.String(), "upstream."+upstreamZone),
		},
		{
			// The lab's load balancer: Services of type LoadBalancer get an
			// address laptops reach (integration/loadbalancer).
			name: "loadbalancer", bin: p.state("bin", "loadbalancer"), inNode: true,
			args:  []string{"-kubeconfig=" + p.AdminKubeconfig(), "-range=" + LBRange.String(), "-health=127.0.0.1:10290"},
			ready: httpProbe("http://127.0.0.1:10290/healthz"),
		},
		{
			// The pods Prometheus scrapes (podtargets): Debian's Prometheus
			// has no Kubernetes service discovery.
			name: "podtargets", bin: p.state("bin", "podtargets"), inNode: true,
			args:  []string{"-kubeconfig=" + p.AdminKubeconfig(), "-out=" + filepath.Join(p.PrometheusTargets(), "pods", "pods.json"), "-health=127.0.0.1:10291"},
			ready: httpProbe("http://127.0.0.1:10291/healthz"),
		},
		{
			// Debian's Prometheus, scraping the gateway and annotated pods for canary analysis;
			// laptops reach it on the node's address, as they reach the API.
			// Its web console files are not needed: the API is.
			name: "prometheus", bin: p.prometheusBinary(), inNode: true,
			args: []string{
				"--config.file=" + p.state("prometheus", "prometheus.yml"),
				"--storage.tsdb.path=" + p.state("prometheus", "data"),
				"--storage.tsdb.retention.time=6h",
				"--web.listen-address=" + PrometheusAddr(),
				"--log.level=warn",
			},
			ready: httpProbe(PrometheusURL() + "/-/ready"),
		},
	}...)
}

// PrometheusAddr is where the lab's Prometheus listens.
func PrometheusAddr() string { return nodeAddr.String() + ":9090" }

// PrometheusURL is the lab's Prometheus, as tunnel canary --prometheus takes it.
func PrometheusURL() string { return "http://" + PrometheusAddr() }
