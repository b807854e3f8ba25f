//go:build !linux

package dns

import (
	"fmt"
	"log/slog"
	"runtime"
)

// NewOSConfigurator is not written for this OS yet.
func NewOSConfigurator(logger *slog.Logger, resolvConf, backupPath, device string) (OSConfigurator, error) {
	return nil, fmt.Errorf("configuring DNS on %s is not supported yet", runtime.GOOS)
}
