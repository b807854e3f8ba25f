package dns

import (
	"log/slog"
	"os"
)

// resolvedVarlink is systemd-resolved's varlink socket (systemd 246+). Its
// presence stands in for "org.freedesktop.resolve1 is on the bus" until we
// take a D-Bus dependency.
const resolvedVarlink = "/run/systemd/resolve/io.systemd.Resolve"

// NewOSConfigurator returns the configurator for this machine: direct on
// resolvConf (keeping the original at backupPath), or systemd-resolved.
func NewOSConfigurator(logger *slog.Logger, resolvConf, backupPath string) (OSConfigurator, error) {
	return DetectConfigurator(logger, DetectEnv{
		ResolvConf: func() ([]byte, error) { return os.ReadFile(resolvConf) },
		ResolvedRunning: func() bool {
			_, err := os.Stat(resolvedVarlink)
			return err == nil
		},
		NewDirect: func() (OSConfigurator, error) { return NewDirect(logger, OSFS{}, resolvConf, backupPath) },
		// NewResolved goes here once it is written; until then machines with
		// systemd-resolved get direct, with resolved's stub as the upstream.
		NewResolved: nil,
	})
}
