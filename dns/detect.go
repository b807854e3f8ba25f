package dns

import (
	"fmt"
	"log/slog"
	"net/netip"
)

// The configurators DetectConfigurator chooses between.
const (
	ModeDirect   = "direct"
	ModeResolved = "systemd-resolved"
)

// resolvedStub is the address systemd-resolved's stub listens on.
var resolvedStub = netip.MustParseAddr("127.0.0.53")

// DetectEnv is what DetectConfigurator looks at and builds with; funcs, so
// tests can describe any machine.
type DetectEnv struct {
	ResolvConf      func() ([]byte, error) // the contents of /etc/resolv.conf
	ResolvedRunning func() bool            // org.freedesktop.resolve1 is on the system bus
	NewDirect       func() (OSConfigurator, error)
	NewResolved     func() (OSConfigurator, error) // nil while there is no resolved configurator
}

// DetectConfigurator picks how to configure the machine's DNS, logs the
// choice and why in one line, and builds that configurator.
func DetectConfigurator(logger *slog.Logger, env DetectEnv) (OSConfigurator, error) {
	mode, reason := detectMode(env)
	logger.Info("dns: chose how to configure the OS resolver", "subsystem", "dns", "mode", mode, "reason", reason)
	build := env.NewDirect
	if mode == ModeResolved {
		build = env.NewResolved
	}
	c, err := build()
	if err != nil {
		return nil, fmt.Errorf("set up %s dns configuration: %w", mode, err)
	}
	return c, nil
}

// detectMode is systemd-resolved when resolv.conf sends names to resolved's
// stub and resolved is running, else direct.
func detectMode(env DetectEnv) (mode, reason string) {
	b, err := env.ResolvConf()
	if err != nil {
		return ModeDirect, fmt.Sprintf("cannot read resolv.conf (%v)", err)
	}
	if hasMarker(b) {
		return ModeDirect, "resolv.conf was written by tunnel; restoring it first"
	}
	rc := parseResolvConf(b)
	stub := false
	for _, a := range rc.nameservers {
		stub = stub || a == resolvedStub
	}
	switch {
	case !stub:
		return ModeDirect, fmt.Sprintf("resolv.conf names %v, not systemd-resolved's stub", rc.nameservers)
	case !env.ResolvedRunning():
		return ModeDirect, "resolv.conf names 127.0.0.53 but systemd-resolved is not running"
	case env.NewResolved == nil:
		return ModeDirect, "systemd-resolved is running but not supported yet; replacing resolv.conf (its stub stays the upstream)"
	default:
		return ModeResolved, "resolv.conf names 127.0.0.53 and systemd-resolved is running"
	}
}
