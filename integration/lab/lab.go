//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Lab is the cluster on this machine.
type Lab struct {
	Paths    Paths
	progress *progress
}

// New returns a handle on the lab at p; progress lines go to out.
func New(p Paths, out io.Writer) *Lab {
	return &Lab{Paths: p, progress: newProgress(out)}
}

func requireRoot(verb string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("lab %s needs root (network namespaces, containerd, kubelet): run it with sudo", verb)
	}
	return nil
}

// Up brings the lab up, or completes a lab that is partly up; on a lab that
// runs with the same config it changes nothing.
func (l *Lab) Up(ctx context.Context, cfg Config) error {
	if err := requireRoot("up"); err != nil {
		return err
	}
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	p := l.Paths
	if old, err := loadConfig(p); err == nil && old != cfg {
		return fmt.Errorf("the lab runs with pod CIDR %s, service CIDR %s and domain %s: run lab down before bringing it up with other values",
			old.PodCIDR, old.ServiceCIDR, old.ClusterDomain)
	}
	if err := ensurePackages(ctx, l.progress); err != nil {
		return err
	}
	if err := ensurePrometheus(ctx, p, l.progress); err != nil {
		return err
	}
	if err := ensureRegistryPackage(ctx, p, l.progress); err != nil {
		return err
	}
	b := &builder{paths: p, progress: l.progress}
	if err := b.ensureAll(ctx); err != nil {
		return err
	}
	if err := recordBaseline(ctx, p); err != nil {
		return fmt.Errorf("record the machine's state: %w", err)
	}
	if err := saveConfig(p, cfg); err != nil {
		return err
	}
	done := l.progress.step(fmt.Sprintf("start the node (pods %s, services %s, domain %s)", cfg.PodCIDR, cfg.ServiceCIDR, cfg.ClusterDomain))
	err := l.startNode(ctx, cfg)
	done(err)
	if err != nil {
		return err
	}
	done = l.progress.step("wait for the node, CoreDNS and a DNS lookup from a pod")
	err = l.startCluster(ctx, cfg)
	done(err)
	if err != nil {
		return err
	}
	// The gateway and Prometheus are part of a cluster a canary runs on, so
	// a user can try one straight after up.
	done = l.progress.step("bring up the gateway (Traefik, built from source on first use: about 10 minutes) and its scrape by Prometheus")
	err = l.upGateway(ctx)
	done(err)
	return err
}

func (l *Lab) upGateway(ctx context.Context) error {
	cs, err := Client(l.Paths)
	if err != nil {
		return err
	}
	return EnsureGateway(ctx, l, cs)
}

func (l *Lab) startNode(ctx context.Context, cfg Config) error {
	p := l.Paths
	pk, err := ensurePKI(p.state("pki"), cfg)
	if err != nil {
		return err
	}
	for _, id := range nodeIdentities() {
		if err := pk.writeKubeconfig(p.kubeconfig(id.file), id.file, id.user); err != nil {
			return fmt.Errorf("write kubeconfig for %s: %w", id.user, err)
		}
	}
	if err := prepareRegistry(ctx, p, pk); err != nil {
		return err
	}
	for _, cmd := range []string{"loadbalancer", "shaper", "podtargets"} {
		if err := BuildBinary(ctx, "./integration/"+cmd, p.state("bin", cmd)); err != nil {
			return err
		}
	}
	d := newTemplateData(p, cfg)
	hosts, err := render("registry-hosts.toml", d)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.state("containerd", "certs.d", RegistryHost(), "hosts.toml"), hosts, 0o644); err != nil {
		return err
	}
	comps := components(p, cfg)
	for tmpl, dst := range nodeConfigFiles {
		data, err := render(tmpl, d)
		if err != nil {
			return err
		}
		old, _ := os.ReadFile(p.state(dst))
		if err := writeFileAtomic(p.state(dst), data, 0o644); err != nil {
			return err
		}
		// Parts read their config once: one that runs with an older config
		// (a lab brought up by older code) starts again.
		if reader := configReaders[tmpl]; reader != "" && old != nil && string(old) != string(data) {
			for _, c := range comps {
				if c.name == reader {
					if err := stop(p, c, 15*time.Second); err != nil {
						return err
					}
				}
			}
		}
	}
	if err := nodeNetwork(ctx, cfg); err != nil {
		return fmt.Errorf("set up the node's network: %w", err)
	}
	for _, c := range comps {
		if err := start(ctx, p, c); err != nil {
			return err
		}
		if c.name == "containerd" {
			if err := ensureImages(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// configReaders names the part that reads each config file and must start
// again when it changes; the others are read anew or hot-reloaded.
var configReaders = map[string]string{"containerd.toml": "containerd", "registry.yml": "registry", "prometheus.yml": "prometheus"}

func (l *Lab) startCluster(ctx context.Context, cfg Config) error {
	p := l.Paths
	cs, err := Client(p)
	if err != nil {
		return err
	}
	subnet, err := nodePodCIDR(ctx, cs)
	if err != nil {
		return err
	}
	d := newTemplateData(p, cfg)
	d.PodSubnet = subnet
	cni, err := render("cni.conflist", d)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.state("cni", "net.d", "10-tunnel-lab.conflist"), cni, 0o644); err != nil {
		return err
	}
	if err := waitNodeReady(ctx, cs); err != nil {
		return l.withLog(err, "kubelet")
	}
	if err := applyManifests(ctx, p, "addons.yaml", d); err != nil {
		return err
	}
	if err := WaitDeployment(ctx, cs, "kube-system", "coredns", 120*time.Second); err != nil {
		return l.withLog(err, "kubelet")
	}
	return checkPodDNS(ctx, cs, cfg.ClusterDomain)
}

func (l *Lab) withLog(err error, component string) error {
	log, _ := os.ReadFile(l.Paths.LogFile(component))
	return fmt.Errorf("%w\n--- last lines of %s:\n%s", err, l.Paths.LogFile(component), tail(string(log), 20))
}

// Down stops everything the lab started and removes its namespaces,
// interfaces, routes, mounts and state; the cache of built binaries stays.
// It returns what still differs from the machine before the first up.
func (l *Lab) Down(ctx context.Context) ([]string, error) {
	if err := requireRoot("down"); err != nil {
		return nil, err
	}
	p := l.Paths
	cfg, _ := loadConfig(p)
	cfg = cfg.Defaults()
	comps := components(p, cfg)
	byName := map[string]component{}
	for _, c := range comps {
		byName[c.name] = c
	}
	var errs []error
	done := l.progress.step("stop the lab")
	// The kubelet first, so it does not restart what the CRI removes.
	if err := stop(p, byName["kubelet"], 20*time.Second); err != nil {
		errs = append(errs, err)
	}
	if _, ok := running(p, byName["containerd"]); ok {
		if err := removePods(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(comps) - 1; i >= 0; i-- {
		if err := stop(p, comps[i], 15*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	killContainers(ctx, p)
	killShims(p)
	for _, name := range laptops() {
		if err := removeLaptop(ctx, p, name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeNodeNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	before, haveBefore := loadBaseline(p)
	if haveBefore {
		restoreFolders(p, before)
		removeCgroups(before)
	}
	if err := unmountUnder(p.State); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(p.State); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", p.State, err))
	}
	err := errors.Join(errs...)
	done(err)
	if err != nil || !haveBefore {
		return nil, err
	}
	after, err := snapshotMachine(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("look at the machine after down: %w", err)
	}
	return before.diff(after), nil
}

// restoreFolders undoes what Kubernetes parts write outside the lab's
// folders whatever they are told: containerd's shim sockets, the kubelet's
// device-plugin socket in
// /var/lib/kubelet and its log links in /var/log/containers, libcni's result
// cache in /var/lib/cni, iproute2's /run/netns mount and /etc/netns. A
// folder the machine did not have goes; in one it had, only the lab's
// entries go.
func restoreFolders(p Paths, before machineState) {
	had := map[string]bool{}
	for _, path := range before.Paths {
		had[path] = true
	}
	mounted := map[string]bool{}
	for _, m := range before.Mounts {
		mounted[m] = true
	}
	for _, dir := range []string{"/run/netns", "/etc/netns"} {
		if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
			continue
		}
		if !mounted[dir] {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if !had[dir] {
			_ = os.Remove(dir)
		}
	}
	// containerd's shims keep their sockets in /run/containerd/s whatever
	// containerd's own state folder is.
	// /run/tunnel holds the run folders of the laptops' tunnel daemons.
	for _, dir := range []string{"/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/run/containerd", "/run/tunnel"} {
		if !had[dir] && len(mountsUnder(dir)) == 0 {
			_ = os.RemoveAll(dir)
		}
	}
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, p.State+"/") {
			_ = os.Remove(l)
		}
	}
	results, _ := filepath.Glob("/var/lib/cni/results/tunnel-lab-*")
	for _, r := range results {
		_ = os.Remove(r)
	}
}

// removeCgroups takes out the cgroups containerd made for the pods
// (k8s.io, in every hierarchy) on a machine that had none before the lab:
// they are empty once the pods are gone, and only rmdir removes them.
func removeCgroups(before machineState) {
	for _, c := range before.Cgroups {
		if strings.HasSuffix(c, "/k8s.io") {
			return
		}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // children first
			_ = unix.Rmdir(dirs[i])
		}
	}
}

// unmountUnder detaches every mount below dir (kubelet volumes, container
// root filesystems, network namespace files), deepest first.
func unmountUnder(dir string) error {
	for range 5 {
		mounts := mountsUnder(dir)
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range mounts {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("mounts under %s would not go away: %s", dir, strings.Join(left, ", "))
	}
	return nil
}

func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

// Status describes the lab for `lab status`.
type Status struct {
	Up          bool              `json:"up"`
	Config      Config            `json:"config"`
	Versions    map[string]string `json:"versions"`
	Components  map[string]string `json:"components"` // name: "running (pid N)" or "stopped"
	NodeAddress string            `json:"nodeAddress"`
	DNSService  string            `json:"dnsService"`
	Kubeconfigs map[string]string `json:"kubeconfigs"`
	Laptops     map[string]string `json:"laptops"` // name: address
	Registry    RegistryStatus    `json:"registry"`
	Logs        string            `json:"logs"`
}

// RegistryStatus says how to reach and push to the lab's registry.
type RegistryStatus struct {
	Host         string `json:"host"`
	CA           string `json:"ca"`           // the machine's CAs and the lab CA, which signed its certificate: SSL_CERT_FILE
	DockerConfig string `json:"dockerConfig"` // DOCKER_CONFIG with the pusher's credentials
}

// Status reports what runs; it needs no root.
func (l *Lab) Status() Status {
	p := l.Paths
	cfg, err := loadConfig(p)
	s := Status{
		Up:     err == nil,
		Config: cfg,
		Versions: map[string]string{
			"kubernetes": KubernetesVersion, "etcd": EtcdVersion, "coredns": CoreDNSVersion,
		},
		Components:  map[string]string{},
		NodeAddress: nodeAddr.String(),
		Kubeconfigs: map[string]string{"admin": p.AdminKubeconfig(), "dev": p.DevKubeconfig()},
		Laptops:     map[string]string{},
		Registry:    RegistryStatus{Host: RegistryHost(), CA: p.RegistryCABundle(), DockerConfig: p.RegistryDockerConfig()},
		Logs:        p.state("logs"),
	}
	if !s.Up {
		return s
	}
	s.DNSService = cfg.DNSServiceIP().String()
	for _, c := range components(p, cfg.Defaults()) {
		if pid, ok := running(p, c); ok {
			s.Components[c.name] = fmt.Sprintf("running (pid %d)", pid)
		} else {
			s.Components[c.name] = "stopped"
			s.Up = false
		}
	}
	for _, name := range laptops() {
		if lp, err := laptopFor(p, name); err == nil {
			s.Laptops[name] = lp.Addr.String()
		}
	}
	return s
}
