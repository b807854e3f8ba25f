package dns

import (
	"errors"
	"log/slog"
)

// ErrResolvedUnsupported is returned where systemd-resolved would be configured.
var ErrResolvedUnsupported = errors.New("systemd-resolved is not supported yet")

// NewResolved is the hook for a systemd-resolved configurator, which would set
// our address and routing domains on the TUN link over D-Bus (SetLinkDNS,
// SetLinkDomains) and so support split DNS. Not written yet.
func NewResolved(logger *slog.Logger) (OSConfigurator, error) {
	return nil, ErrResolvedUnsupported
}
