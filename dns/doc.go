// Package dns answers the laptop's queries: cluster names go through the
// tunnel, everything else to the resolver the machine had; per-OS
// configurators point the machine at it and restore what was there.
//
// The resolver is a chain of handlers in the CoreDNS manner (cluster →
// search path → upstream) behind a cache; see resolver.go and chain.go. The
// OS side is the OSConfigurator seam from osconfig.go, with the resolv.conf
// implementation in direct.go and the choice between implementations in
// detect.go.
package dns
