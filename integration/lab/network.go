//go:build linux

package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The lab drives the kernel with iproute2 and iptables rather than netlink
// calls: named network namespaces and `ip netns exec` are iproute2's own
// conventions (the /etc/netns resolv.conf bind mount among them), and every
// step stays visible and repeatable by hand.

// run runs a command and returns its trimmed output, or an error that
// carries what it printed.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

func linkExists(ctx context.Context, netns, link string) bool {
	args := []string{"link", "show", "dev", link}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	_, err := run(ctx, "ip", args...)
	return err == nil
}

// nodeNetwork makes the node's namespace: the node address on a sink device
// that also carries the default route (so nothing the cluster sends can
// leave through the machine's real interface), a veth to the host so tests
// reach the API server, and prohibit routes on the host for every lab range.
func nodeNetwork(ctx context.Context, cfg Config) error {
	if !netnsExists(nodeNetns) {
		if _, err := run(ctx, "ip", "netns", "add", nodeNetns); err != nil {
			return err
		}
	}
	n := func(args ...string) error {
		_, err := run(ctx, "ip", append([]string{"-n", nodeNetns}, args...)...)
		return err
	}
	if err := n("link", "set", "lo", "up"); err != nil {
		return err
	}
	if !linkExists(ctx, nodeNetns, nodeDummy) {
		// ifb drops whatever is sent to it: a sink for the default route.
		steps := [][]string{
			{"link", "add", nodeDummy, "type", "ifb"},
			{"addr", "add", nodeAddr.String() + "/32", "dev", nodeDummy},
			{"link", "set", nodeDummy, "up"},
			{"route", "add", "default", "dev", nodeDummy},
		}
		for _, s := range steps {
			if err := n(s...); err != nil {
				return err
			}
		}
	}
	if !linkExists(ctx, "", hostVeth) {
		hostCIDR := netip.PrefixFrom(hostLinkHost, 30).String()
		nodeCIDR := netip.PrefixFrom(hostLinkNode, 30).String()
		for _, s := range [][]string{
			{"link", "add", hostVeth, "type", "veth", "peer", "name", nodeVeth, "netns", nodeNetns},
			{"addr", "add", hostCIDR, "dev", hostVeth},
			{"link", "set", hostVeth, "up"},
			{"-n", nodeNetns, "addr", "add", nodeCIDR, "dev", nodeVeth},
			{"-n", nodeNetns, "link", "set", nodeVeth, "up"},
			{"route", "replace", nodeAddr.String() + "/32", "via", hostLinkNode.String(), "dev", hostVeth, "proto", routeProto},
		} {
			if _, err := run(ctx, "ip", s...); err != nil {
				return err
			}
		}
	}
	// Laptops reach the node's own addresses (the local table comes first)
	// and nothing the node would forward: not pods, not Services after
	// kube-proxy's DNAT, not the host.
	if out, _ := run(ctx, "ip", "-n", nodeNetns, "rule", "show", "pref", laptopRulePref); out == "" {
		if err := n("route", "replace", "prohibit", "default", "table", laptopTable); err != nil {
			return err
		}
		if err := n("rule", "add", "from", laptopRange.String(), "lookup", laptopTable, "pref", laptopRulePref); err != nil {
			return err
		}
	}
	if err := exposeServices(ctx); err != nil {
		return err
	}
	// A wrong route on the host fails here instead of leaving the machine.
	for _, r := range []string{labRange.String(), cfg.PodCIDR, cfg.ServiceCIDR} {
		if _, err := run(ctx, "ip", "route", "replace", "prohibit", r, "proto", routeProto); err != nil {
			return err
		}
	}
	// Pods on one bridge reach each other's Services only when bridged
	// traffic passes iptables, so kube-proxy's DNAT is undone on the reply.
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"} {
		if _, err := run(ctx, "ip", "netns", "exec", nodeNetns, "sysctl", "-qw", s); err != nil {
			return err
		}
	}
	return nil
}

// exposeServices lets laptops reach what a cluster exposes to its users'
// networks, and only that: NodePorts on the node's address and the load
// balancer's addresses. Their packets are marked before kube-proxy's DNAT
// (mangle comes first) and then routed by the main table, to the pod,
// where the laptops' rule would prohibit them.
func exposeServices(ctx context.Context) error {
	rules := [][]string{}
	for _, proto := range []string{"tcp", "udp"} {
		rules = append(rules,
			[]string{"-s", laptopRange.String(), "-d", nodeAddr.String() + "/32", "-p", proto, "--dport", nodePortRange},
			[]string{"-s", laptopRange.String(), "-d", LBRange.String(), "-p", proto})
	}
	for _, r := range rules {
		spec := append(append([]string{"PREROUTING"}, r...), "-j", "MARK", "--set-xmark", exposedMark)
		ipt := func(op string) error {
			_, err := run(ctx, "ip", append([]string{"netns", "exec", nodeNetns, "iptables", "-w", "-t", "mangle", op}, spec...)...)
			return err
		}
		if ipt("-C") != nil {
			if err := ipt("-A"); err != nil {
				return err
			}
		}
	}
	if out, _ := run(ctx, "ip", "-n", nodeNetns, "rule", "show", "pref", exposedRulePref); out == "" {
		if _, err := run(ctx, "ip", "-n", nodeNetns, "rule", "add", "fwmark", exposedMark, "lookup", "main", "pref", exposedRulePref); err != nil {
			return err
		}
	}
	return nil
}

// removeNodeNetwork undoes nodeNetwork; deleting the namespace takes its
// devices, routes, iptables rules and sysctls with it.
func removeNodeNetwork(ctx context.Context) error {
	var errs []string
	if netnsExists(nodeNetns) {
		if _, err := run(ctx, "ip", "netns", "delete", nodeNetns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if linkExists(ctx, "", hostVeth) {
		if _, err := run(ctx, "ip", "link", "delete", hostVeth); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if _, err := run(ctx, "ip", "route", "flush", "proto", routeProto); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove node network: %s", strings.Join(errs, "; "))
	}
	return nil
}

// inNode returns a command that runs in the node's network namespace but
// the machine's mount namespace: kubelet and containerd must see each
// other's mounts, which `ip netns exec` would hide from one another.
func inNode(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + nodeNetns, "--", name}, args...)...)
}

// RunCommand runs a command on the host and returns its output, for tests.
func RunCommand(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, argv[0], argv[1:]...)
}
