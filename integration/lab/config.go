//go:build linux

// Package lab brings up a real single-node Kubernetes cluster on this machine
// and the "laptop" network namespaces that talk to it, for the end-to-end
// tests and the demo.
//
// The node lives in a network namespace of its own (tlab-node), so that its
// iptables rules, bridge, routes and sysctls vanish with the namespace and
// nothing the cluster does can reach the machine's real interface: the node
// namespace's default route points into a dummy device. Laptops are further
// namespaces joined to the node by veth pairs; they reach the node's own
// address (API server, upstream DNS) and nothing the node would forward.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// Pinned versions of what the lab builds from the Go module proxy.
const (
	KubernetesVersion = "v1.37.2"
	CoreDNSVersion    = "v1.14.7"
	EtcdVersion       = "v3.6.16"
)

// Fixed lab addresses. They sit on interfaces the lab creates; the host
// holds prohibit routes for all lab ranges so a wrong route fails locally.
var (
	labRange     = netip.MustParsePrefix("10.208.0.0/14") // host link, node address, laptop links
	hostLinkHost = netip.MustParseAddr("10.208.0.1")      // host side of the host link
	hostLinkNode = netip.MustParseAddr("10.208.0.2")      // node side of the host link
	nodeAddr     = netip.MustParseAddr("10.209.0.1")      // the node's address: API server, upstream DNS
	laptopRange  = netip.MustParsePrefix("10.210.0.0/16") // one /30 per laptop
	// LBRange is where the lab's load balancer hands out Services'
	// addresses; the node answers for them, as MetalLB's L2 mode makes one.
	LBRange = netip.MustParsePrefix("10.211.0.0/24")
)

// Names of what the lab creates on the machine.
const (
	nodeNetns      = "tlab-node"
	hostVeth       = "tlab-host" // host side of the host link
	nodeVeth       = "host0"     // node side of the host link, inside tlab-node
	nodeDummy      = "tlab0"     // carries the node address and the default route
	nodeName       = "tlab-node"
	upstreamZone   = "lab.test" // the zone the lab's upstream resolver answers
	routeProto     = "211"      // marks the host routes the lab adds, so down finds them
	laptopTable    = "210"      // node routing table for what laptops send: prohibit all
	laptopRulePref = "100"
	// exposedMark marks what a laptop sends to a NodePort or a load
	// balancer's address, before kube-proxy's DNAT; exposedRulePref routes
	// it by the main table, ahead of the laptops' prohibit rule.
	exposedMark     = "0x200000/0x200000"
	exposedRulePref = "99"
	nodePortRange   = "30000:32767"
)

// Config is what `lab up` takes. The zero value is completed by Defaults.
type Config struct {
	PodCIDR       string `json:"podCIDR"`
	ServiceCIDR   string `json:"serviceCIDR"`
	ClusterDomain string `json:"clusterDomain"`
}

// Defaults fills unset fields with the usual kubeadm-like values.
func (c Config) Defaults() Config {
	if c.PodCIDR == "" {
		c.PodCIDR = "10.244.0.0/16"
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.96.0.0/16"
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	return c
}

// Validate checks the CIDRs and domain and that they keep clear of the
// lab's own ranges.
func (c Config) Validate() error {
	pod, err := netip.ParsePrefix(c.PodCIDR)
	if err != nil || !pod.Addr().Is4() {
		return fmt.Errorf("pod CIDR %q is not an IPv4 CIDR such as 10.244.0.0/16", c.PodCIDR)
	}
	svc, err := netip.ParsePrefix(c.ServiceCIDR)
	if err != nil || !svc.Addr().Is4() {
		return fmt.Errorf("service CIDR %q is not an IPv4 CIDR such as 10.96.0.0/16", c.ServiceCIDR)
	}
	if pod.Bits() > 24 {
		return fmt.Errorf("pod CIDR %s is too small: the node takes a /24 of it", pod)
	}
	if svc.Bits() < 12 || svc.Bits() > 28 {
		return fmt.Errorf("service CIDR %s must be between /12 and /28", svc)
	}
	for _, p := range []struct {
		name string
		p    netip.Prefix
	}{{"pod CIDR", pod}, {"service CIDR", svc}} {
		if p.p.Overlaps(labRange) {
			return fmt.Errorf("%s %s overlaps the lab's own range %s", p.name, p.p, labRange)
		}
	}
	if pod.Overlaps(svc) {
		return fmt.Errorf("pod CIDR %s overlaps service CIDR %s", pod, svc)
	}
	if !validDomain(c.ClusterDomain) {
		return fmt.Errorf("cluster domain %q is not a DNS name such as cluster.local", c.ClusterDomain)
	}
	return nil
}

func validDomain(d string) bool {
	if d == "" || len(d) > 200 || d[0] == '.' || d[len(d)-1] == '.' {
		return false
	}
	prevDot := false
	for _, r := range d {
		switch {
		case r == '.':
			if prevDot {
				return false
			}
			prevDot = true
			continue
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
		default:
			return false
		}
		prevDot = false
	}
	return true
}

// kubernetesServiceIP is the first address of the service CIDR, which the
// API server gives the `kubernetes` Service.
func (c Config) kubernetesServiceIP() netip.Addr {
	return netip.MustParsePrefix(c.ServiceCIDR).Masked().Addr().Next()
}

// DNSServiceIP is the cluster DNS Service's ClusterIP (the tenth address, as
// kubeadm does).
func (c Config) DNSServiceIP() netip.Addr {
	a := netip.MustParsePrefix(c.ServiceCIDR).Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	return a
}

// Paths says where the lab keeps its state (removed by down) and its cache of
// built binaries (kept, keyed by version).
type Paths struct {
	State string
	Cache string
}

// DefaultPaths are used unless TUNNEL_LAB_STATE / TUNNEL_LAB_CACHE say otherwise.
func DefaultPaths() Paths {
	p := Paths{State: "/var/lib/tunnel-lab", Cache: "/var/cache/tunnel-lab"}
	if v := os.Getenv("TUNNEL_LAB_STATE"); v != "" {
		p.State = v
	}
	if v := os.Getenv("TUNNEL_LAB_CACHE"); v != "" {
		p.Cache = v
	}
	return p
}

func (p Paths) state(elem ...string) string {
	return filepath.Join(append([]string{p.State}, elem...)...)
}

// AdminKubeconfig is valid from the host, the node and every laptop.
// PrometheusTargets is the folder of the lab Prometheus's file_sd targets.
func (p Paths) PrometheusTargets() string { return p.state("prometheus", "targets") }

func (p Paths) AdminKubeconfig() string { return p.state("kubeconfig", "admin.conf") }

// DevKubeconfig is the non-admin `dev` user's.
func (p Paths) DevKubeconfig() string { return p.state("kubeconfig", "dev.conf") }

// KubernetesBin is the folder of the built Kubernetes binaries.
func (p Paths) KubernetesBin() string {
	return filepath.Join(p.Cache, "kubernetes-"+KubernetesVersion, "bin")
}

func (p Paths) configFile() string { return p.state("config.json") }

// errNotUp is returned by operations that need a running lab.
var errNotUp = errors.New("the lab is not up: run `make lab-up` (or `lab up`) first")

// loadConfig reads the config the running lab was brought up with.
// LoadConfig reads the config the running lab was brought up with.
func LoadConfig(p Paths) (Config, error) { return loadConfig(p) }

func loadConfig(p Paths) (Config, error) {
	b, err := os.ReadFile(p.configFile())
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, errNotUp
	}
	if err != nil {
		return Config{}, fmt.Errorf("read lab config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse lab config %s: %w", p.configFile(), err)
	}
	return c, nil
}

func saveConfig(p Paths, c Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.configFile(), b, 0o644)
}

// writeFileAtomic writes via a temp file and rename so a crash never leaves a
// half-written file behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
