//go:build linux

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// debianPackages are what the lab needs from the distribution; each entry
// names a command that shows the package is there.
var debianPackages = []struct{ pkg, cmd string }{
	{"containerd", "containerd"},
	{"runc", "runc"},
	{"containernetworking-plugins", "/usr/lib/cni/bridge"},
	{"iptables", "iptables"},
	{"conntrack", "conntrack"},
	{"iproute2", "ip"},
	{"util-linux", "nsenter"},
	{"dnsutils", "dig"},
	{"curl", "curl"},
	{"dbus-daemon", "dbus-daemon"},        // a private system bus for a laptop's systemd-resolved
	{"prometheus", "/usr/bin/prometheus"}, // scrapes the gateway for tunnel canary
}

// ensurePackages installs the Debian packages the machine lacks.
func ensurePackages(ctx context.Context, p *progress) error {
	var missing []string
	for _, d := range debianPackages {
		if _, err := exec.LookPath(d.cmd); err != nil {
			missing = append(missing, d.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing packages %s and no apt-get to install them: the lab needs Debian or Ubuntu", strings.Join(missing, ", "))
	}
	done := p.step("install " + strings.Join(missing, " ") + " from Debian's packages")
	err := aptInstall(ctx, missing)
	done(err)
	return err
}

func aptInstall(ctx context.Context, pkgs []string) error {
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, tail(string(out), 20))
		}
		return nil
	}
	if err := run("update"); err != nil {
		return err
	}
	return run(append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)...)
}
