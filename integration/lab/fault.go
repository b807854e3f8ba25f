//go:build linux

package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The faults a user's cluster and laptop live through, caused on the lab as
// they happen there: `lab fault ...` by hand, the chaos tests in code. Each
// returns when the fault is over (the part is back, the cut healed), so a
// caller measures recovery from its return.

// Faults names what Fault causes, for the CLI's help.
var Faults = []string{"apiserver", "kubelet", "coredns", "manager", "manager-force", "partition", "udp", "sleep", "readdress", "sidecar"}

// FaultOptions say where a fault strikes and for how long.
type FaultOptions struct {
	Laptop string        // partition, udp, sleep, readdress
	For    time.Duration // partition, udp, sleep
	Pod    string        // sidecar: NAMESPACE/POD
}

// Fault causes one fault and returns once it is over.
func (l *Lab) Fault(ctx context.Context, kind string, opt FaultOptions) error {
	if err := requireRoot("fault"); err != nil {
		return err
	}
	needLaptop := func() error {
		if opt.Laptop == "" {
			return fmt.Errorf("fault %s needs a laptop", kind)
		}
		return nil
	}
	switch kind {
	case "apiserver":
		// As an upgrade does it: the process ends, a new one starts.
		return l.restart(ctx, "kube-apiserver")
	case "kubelet":
		// containerd restarts under a running kubelet; the containers
		// (their shims) go on.
		return l.restart(ctx, "containerd", "kubelet")
	case "coredns":
		return l.recreatePods(ctx, "kube-system", "k8s-app=kube-dns", true)
	case "manager":
		return l.recreatePods(ctx, "tunnel-system", "app.kubernetes.io/name=tunnel-manager", false)
	case "manager-force":
		return l.recreatePods(ctx, "tunnel-system", "app.kubernetes.io/name=tunnel-manager", true)
	case "partition":
		if err := needLaptop(); err != nil {
			return err
		}
		return l.partition(ctx, opt.Laptop, opt.For)
	case "udp":
		if err := needLaptop(); err != nil {
			return err
		}
		if err := l.DropUDP(ctx, opt.Laptop, true); err != nil {
			return err
		}
		defer l.DropUDP(context.WithoutCancel(ctx), opt.Laptop, false)
		return sleepCtx(ctx, opt.For)
	case "sleep":
		if err := needLaptop(); err != nil {
			return err
		}
		return l.sleepDaemon(ctx, opt.Laptop, opt.For)
	case "readdress":
		if err := needLaptop(); err != nil {
			return err
		}
		_, err := l.Readdress(ctx, opt.Laptop)
		return err
	case "sidecar":
		ns, pod, ok := strings.Cut(opt.Pod, "/")
		if !ok {
			return fmt.Errorf("fault sidecar needs NAMESPACE/POD, not %q", opt.Pod)
		}
		return l.killContainer(ctx, ns, pod, "tunnel-agent")
	}
	return fmt.Errorf("unknown fault %q: use one of %s", kind, strings.Join(Faults, ", "))
}

// restart stops the named node components (in reverse) and starts them
// again (in order), each waited for until ready.
func (l *Lab) restart(ctx context.Context, names ...string) error {
	cfg, err := loadConfig(l.Paths)
	if err != nil {
		return errNotUp
	}
	var comps []component
	for _, c := range components(l.Paths, cfg) {
		if slices.Contains(names, c.name) {
			comps = append(comps, c)
		}
	}
	for _, c := range slices.Backward(comps) {
		if err := stop(l.Paths, c, 30*time.Second); err != nil {
			return err
		}
	}
	for _, c := range comps {
		if err := start(ctx, l.Paths, c); err != nil {
			return err
		}
	}
	return nil
}

// recreatePods deletes the pods that selector picks in ns (at once when
// force, else with their grace period) and waits until their controller's
// replacements are ready.
func (l *Lab) recreatePods(ctx context.Context, ns, selector string, force bool) error {
	cs, err := Client(l.Paths)
	if err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return err
	}
	if len(pods.Items) == 0 {
		return fmt.Errorf("no pods %s in namespace %s", selector, ns)
	}
	opt := metav1.DeleteOptions{}
	if force {
		opt.GracePeriodSeconds = new(int64)
	}
	old := map[string]bool{}
	for _, p := range pods.Items {
		old[p.Name] = true
		if err := cs.CoreV1().Pods(ns).Delete(ctx, p.Name, opt); err != nil {
			return err
		}
	}
	return waitReplaced(ctx, cs, ns, selector, old, len(pods.Items))
}

// waitReplaced waits until n pods that selector picks, none of old, are
// ready and the old ones are gone.
func waitReplaced(ctx context.Context, cs kubernetes.Interface, ns, selector string, old map[string]bool, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			ready, stale := 0, 0
			for _, p := range pods.Items {
				switch {
				case old[p.Name]:
					stale++
				case p.DeletionTimestamp == nil && podIsReady(&p):
					ready++
				}
			}
			if ready >= n && stale == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pods %s in %s were not replaced: %w", selector, ns, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// killContainer kills a container's processes with SIGKILL, as the OOM
// killer does, and waits until the kubelet has it running again.
func (l *Lab) killContainer(ctx context.Context, ns, pod, container string) error {
	cs, err := Client(l.Paths)
	if err != nil {
		return err
	}
	restarts := func() (int32, string, bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return 0, "", false, err
		}
		for _, s := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if s.Name == container {
				return s.RestartCount, s.ContainerID, s.Ready || (s.Started != nil && *s.Started && s.State.Running != nil), nil
			}
		}
		return 0, "", false, fmt.Errorf("pod %s/%s has no container %s", ns, pod, container)
	}
	before, id, _, err := restarts()
	if err != nil {
		return err
	}
	_, cid, ok := strings.Cut(id, "://")
	if !ok {
		return fmt.Errorf("container %s of %s/%s does not run", container, ns, pod)
	}
	if out, err := run(ctx, "ctr", "--address="+l.Paths.containerdSocket(), "--namespace=k8s.io",
		"tasks", "kill", "--all", "--signal", "SIGKILL", cid); err != nil {
		return fmt.Errorf("kill container %s: %v: %s", container, err, out)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		n, _, running, err := restarts()
		if err == nil && n > before && running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %s of %s/%s did not come back: %w", container, ns, pod, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// faultChain is the iptables chain a partition adds in a laptop.
const faultChain = "TLAB-FAULT"

// partition cuts a laptop off from everything but its own loopback for d,
// as a lost network does (packets vanish; nothing is refused), then heals.
func (l *Lab) partition(ctx context.Context, name string, d time.Duration) error {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return err
	}
	ipt := func(args ...string) error {
		_, err := run(ctx, "ip", append([]string{"netns", "exec", lp.Netns, "iptables", "-w"}, args...)...)
		return err
	}
	heal := func() {
		_ = ipt("-D", "INPUT", "-j", faultChain)
		_ = ipt("-D", "OUTPUT", "-j", faultChain)
		_ = ipt("-F", faultChain)
		_ = ipt("-X", faultChain)
	}
	heal() // a cut an interrupted run left
	defer heal()
	for _, s := range [][]string{
		{"-N", faultChain},
		{"-A", faultChain, "-i", "lo", "-j", "RETURN"},
		{"-A", faultChain, "-o", "lo", "-j", "RETURN"},
		{"-A", faultChain, "-j", "DROP"},
		{"-I", "INPUT", "-j", faultChain},
		{"-I", "OUTPUT", "-j", faultChain},
	} {
		if err := ipt(s...); err != nil {
			return err
		}
	}
	return sleepCtx(ctx, d)
}

// udpChain is the iptables chain DropUDP adds in a laptop.
const udpChain = "TLAB-NOUDP"

// DropUDP makes a laptop's network drop the UDP it sends, but for DNS (as
// a firewall that lets only TCP and DNS through does), or lets it through
// again.
func (l *Lab) DropUDP(ctx context.Context, name string, on bool) error {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return err
	}
	ipt := func(args ...string) error {
		_, err := run(ctx, "ip", append([]string{"netns", "exec", lp.Netns, "iptables", "-w"}, args...)...)
		return err
	}
	_ = ipt("-D", "OUTPUT", "-j", udpChain)
	_ = ipt("-F", udpChain)
	_ = ipt("-X", udpChain)
	if !on {
		return nil
	}
	for _, s := range [][]string{
		{"-N", udpChain},
		{"-A", udpChain, "-o", "lo", "-j", "RETURN"},
		{"-A", udpChain, "-p", "udp", "--dport", "53", "-j", "RETURN"},
		{"-A", udpChain, "-p", "udp", "-j", "DROP"},
		{"-I", "OUTPUT", "-j", udpChain},
	} {
		if err := ipt(s...); err != nil {
			return err
		}
	}
	return nil
}

// sleepCtx waits d, or less if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleepDaemon stops the tunnel daemon that runs in a laptop (SIGSTOP, as a
// laptop's lid does to every process) for d, then lets it go on.
func (l *Lab) sleepDaemon(ctx context.Context, name string, d time.Duration) error {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return err
	}
	pids, err := processesIn(ctx, lp.Netns, func(argv []string) bool {
		return len(argv) > 1 && strings.HasPrefix(filepath.Base(argv[0]), "tunnel") && argv[1] == "daemon"
	})
	if err != nil {
		return err
	}
	if len(pids) == 0 {
		return fmt.Errorf("no tunnel daemon runs in laptop %s", name)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return err
		}
	}
	defer func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	return sleepCtx(ctx, d)
}

// processesIn lists the processes in network namespace netns (as `ip
// netns pids` names them, which removeLaptop also uses) whose command line
// match accepts.
func processesIn(ctx context.Context, netns string, match func(argv []string) bool) ([]int, error) {
	out, err := run(ctx, "ip", "netns", "pids", netns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Readdress moves a laptop to its other address, as joining another Wi-Fi
// does: the old address is gone at once, so connections from it die with
// it. It returns the new address; the next call moves the laptop back.
func (l *Lab) Readdress(ctx context.Context, name string) (string, error) {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return "", err
	}
	out, err := run(ctx, "ip", "-n", lp.Netns, "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil {
		return "", err
	}
	return l.MoveLaptop(ctx, name, !strings.Contains(out, " "+roaming(lp).Addr.String()+"/"))
}

// MoveLaptop puts a laptop on its roaming address, or back on its home
// one, whichever address it has now (a move an interrupted run left half
// done included). It returns the address.
func (l *Lab) MoveLaptop(ctx context.Context, name string, roam bool) (string, error) {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return "", err
	}
	to := lp
	if roam {
		to = roaming(lp)
	}
	nodeSide := "lap-" + lp.Name
	steps := [][]string{
		{"-n", nodeNetns, "addr", "replace", to.Gw.String() + "/30", "dev", nodeSide},
		{"-n", lp.Netns, "addr", "flush", "dev", "eth0"},
		{"-n", lp.Netns, "addr", "add", to.Addr.String() + "/30", "dev", "eth0"},
		{"-n", lp.Netns, "route", "replace", "default", "via", to.Gw.String()},
	}
	for _, s := range steps {
		if _, err := run(ctx, "ip", s...); err != nil {
			return "", err
		}
	}
	return to.Addr.String(), nil
}

// roaming is a laptop's second link: its slot in the upper half of the
// laptops' range, which laptopIndex never hands out.
func roaming(l Laptop) Laptop {
	gw, addr := l.Gw.As4(), l.Addr.As4()
	gw[2] |= 0x80
	addr[2] |= 0x80
	l.Gw, l.Addr = netip.AddrFrom4(gw), netip.AddrFrom4(addr)
	return l
}

// LaptopProcesses lists the processes of a laptop whose command line
// match accepts.
func (l *Lab) LaptopProcesses(ctx context.Context, name string, match func(argv []string) bool) ([]int, error) {
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return nil, err
	}
	return processesIn(ctx, lp.Netns, match)
}

// PodProcesses lists the processes of the pod with address podIP (in the
// pod's network namespace, which the CNI made) whose command line match
// accepts.
func (l *Lab) PodProcesses(ctx context.Context, podIP string, match func(argv []string) bool) ([]int, error) {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(out, "\n") {
		ns, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(ns, "cni-") {
			continue
		}
		addrs, err := run(ctx, "ip", "-n", ns, "-4", "-o", "addr", "show")
		if err == nil && strings.Contains(addrs, " "+podIP+"/") {
			return processesIn(ctx, ns, match)
		}
	}
	return nil, fmt.Errorf("no network namespace has the pod address %s", podIP)
}
