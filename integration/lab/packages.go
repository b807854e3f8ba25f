//go:build linux

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	{"wireguard-tools", "wg"},                     // an attacker's WireGuard, in the security tests
	{"dbus-daemon", "dbus-daemon"},                // a private system bus for a laptop's systemd-resolved
	{"ca-certificates", "update-ca-certificates"}, // what the agent image trusts
	{"chromium", "chromium"},                      // headless, to look at a canary's report page
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

// unpackedPackages downloads Debian packages and unpacks them into the
// cache folder name, once, without installing them: nothing of theirs runs
// on the machine but what the lab starts (no service, no user, no
// configuration). The folder appears only when unpacking finished; marker
// is a file in it that shows it did.
func unpackedPackages(ctx context.Context, p Paths, name, marker string, pkgs ...string) (string, error) {
	root := filepath.Join(p.Cache, name)
	if _, err := os.Stat(filepath.Join(root, marker)); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(p.Cache, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(p.Cache, name+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	download := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download"}, pkgs...)...)
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get download %s: %w\n%s", strings.Join(pkgs, " "), err, tail(string(out), 10))
		}
		return nil
	}
	if err := download(); err != nil {
		// The package lists may be older than the mirror.
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("%w (and apt-get update: %v\n%s)", err, uerr, tail(string(out), 10))
		}
		if err := download(); err != nil {
			return "", err
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	unpacked := filepath.Join(tmp, "root")
	for _, deb := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, unpacked).CombinedOutput(); err != nil {
			return "", fmt.Errorf("unpack %s: %w\n%s", filepath.Base(deb), err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(unpacked, marker)); err != nil {
		return "", fmt.Errorf("the packages %s have no %s", strings.Join(pkgs, " "), marker)
	}
	return root, os.Rename(unpacked, root)
}

// prometheusBinary is Debian's Prometheus, unpacked into the cache: a
// package install would also start it as a system service.
func (p Paths) prometheusBinary() string {
	return filepath.Join(p.Cache, "prometheus", "usr/bin/prometheus")
}

func ensurePrometheus(ctx context.Context, p Paths, pr *progress) error {
	return ensureUnpacked(ctx, p, pr, "prometheus", "usr/bin/prometheus")
}

// ensureUnpacked unpacks Debian's package pkg into the cache folder of the
// same name, with a progress line, unless its marker file is there.
func ensureUnpacked(ctx context.Context, p Paths, pr *progress, pkg, marker string) error {
	if _, err := os.Stat(filepath.Join(p.Cache, pkg, marker)); err == nil {
		return nil
	}
	done := pr.step("download Debian's " + pkg + " into " + p.Cache)
	_, err := unpackedPackages(ctx, p, pkg, marker, pkg)
	done(err)
	return err
}
