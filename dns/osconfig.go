package dns

import "net/netip"

// OSConfig is the machine's DNS setting as an OSConfigurator sees it.
type OSConfig struct {
	Nameservers   []netip.Addr
	SearchDomains []string
	MatchDomains  []string // for split DNS (systemd-resolved routing domains); empty means all names
}

// IsZero reports whether c is the zero config, which means "restore what was there".
func (c OSConfig) IsZero() bool {
	return len(c.Nameservers) == 0 && len(c.SearchDomains) == 0 && len(c.MatchDomains) == 0
}

// Upstreams returns the nameservers as the resolver's Config.Upstreams wants
// them: port 53, which is all resolv.conf can say.
func (c OSConfig) Upstreams() []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range c.Nameservers {
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out
}

// OSConfigurator points the machine's resolver at ours. A zero OSConfig means
// "restore what was there".
type OSConfigurator interface {
	SetDNS(cfg OSConfig) error
	SupportsSplitDNS() bool
	GetBaseConfig() (OSConfig, error) // what the machine had before us: the upstreams
	Close() error                     // restore
}

// Repairer is implemented by configurators that can undo what a crashed
// earlier run left behind; the daemon calls Repair when it starts.
type Repairer interface {
	Repair() (repaired bool, err error)
}

// NoopConfigurator changes nothing; for tests and for --no-dns.
type NoopConfigurator struct{}

func (NoopConfigurator) SetDNS(OSConfig) error            { return nil }
func (NoopConfigurator) SupportsSplitDNS() bool           { return false }
func (NoopConfigurator) GetBaseConfig() (OSConfig, error) { return OSConfig{}, nil }
func (NoopConfigurator) Close() error                     { return nil }
