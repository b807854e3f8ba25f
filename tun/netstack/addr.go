package netstack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// addrPort converts a gVisor address and port; IPv4-mapped IPv6 addresses
// become IPv4 ones.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}

// fullAddr converts ap for binding in the stack, with its protocol.
func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	ip := ap.Addr().Unmap()
	proto := header.IPv6ProtocolNumber
	if ip.Is4() {
		proto = header.IPv4ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ip.AsSlice()), Port: ap.Port()}, proto
}
