package dns

import (
	"log/slog"
	"os"
)

// NewOSConfigurator returns the configurator for this machine: systemd-resolved
// over D-Bus (for device's link) when resolv.conf names its stub and it is on
// the system bus, else direct on resolvConf (keeping the original at
// backupPath).
func NewOSConfigurator(logger *slog.Logger, resolvConf, backupPath, device string) (OSConfigurator, error) {
	return DetectConfigurator(logger, DetectEnv{
		ResolvConf:      func() ([]byte, error) { return os.ReadFile(resolvConf) },
		ResolvedRunning: ResolvedOnBus,
		NewDirect:       func() (OSConfigurator, error) { return NewDirect(logger, OSFS{}, resolvConf, backupPath) },
		NewResolved:     func() (OSConfigurator, error) { return NewResolved(logger, device) },
	})
}
