// Package dns answers the laptop's queries: cluster names go through the
// tunnel, everything else to the resolver the machine had; per-OS
// configurators point the machine at it and restore what was there.
package dns
