package wgpath

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers the WireGuard path carries.
const (
	protoTCP = 6
	protoUDP = 17
)

// TCP flags the flow table watches.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// packet is what the laptop's side reads of an IP packet: enough to choose
// its path and to rewrite its addresses. Fragments, IPv6 extension headers
// and protocols other than TCP and UDP do not parse: they stay on the
// port-forward path, where the userspace stack deals with them.
type packet struct {
	b        []byte
	proto    uint8
	l4       int // offset of the TCP or UDP header
	src, dst netip.Addr
	sport    uint16
	dport    uint16
	flags    uint8  // TCP's
	seq, ack uint32 // TCP's sequence and acknowledgment numbers
}

// parse reads b's headers; ok is false when b is not a whole TCP or UDP
// packet of the WireGuard path.
func parse(b []byte) (p packet, ok bool) {
	if len(b) < 1 {
		return p, false
	}
	p.b = b
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl || total > len(b) {
			return p, false
		}
		if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 { // MF or an offset: a fragment
			return p, false
		}
		p.proto, p.l4 = b[9], ihl
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.b = b[:total]
	case 6:
		if len(b) < 40 {
			return p, false
		}
		total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return p, false
		}
		p.proto, p.l4 = b[6], 40
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dst = netip.AddrFrom16([16]byte(b[24:40]))
		p.b = b[:total]
	default:
		return p, false
	}
	l4 := p.b[p.l4:]
	switch p.proto {
	case protoTCP:
		if len(l4) < 20 {
			return p, false
		}
		p.flags = l4[13]
		p.seq = binary.BigEndian.Uint32(l4[4:8])
		p.ack = binary.BigEndian.Uint32(l4[8:12])
	case protoUDP:
		if len(l4) < 8 {
			return p, false
		}
	default:
		return p, false
	}
	p.sport = binary.BigEndian.Uint16(l4[0:2])
	p.dport = binary.BigEndian.Uint16(l4[2:4])
	return p, true
}

// seqEnd is the sequence number after a TCP segment: its payload, and a
// SYN or FIN, each count one.
func (p *packet) seqEnd() uint32 {
	n := uint32(p.payload())
	if p.flags&tcpSYN != 0 {
		n++
	}
	if p.flags&tcpFIN != 0 {
		n++
	}
	return p.seq + n
}

// payload is how many bytes the packet carries past its TCP or UDP header.
func (p *packet) payload() int {
	n := len(p.b) - p.l4 - 8
	if p.proto == protoTCP {
		n = len(p.b) - p.l4 - int(p.b[p.l4+12]>>4)*4
	}
	return max(n, 0)
}

// setSrc and setDst rewrite an address in place, keeping the IPv4 header's
// and the TCP or UDP checksum right without summing the payload again
// (RFC 1624). The new address has the packet's IP version.
func (p *packet) setSrc(a netip.Addr) { p.setAddr(true, a); p.src = a }
func (p *packet) setDst(a netip.Addr) { p.setAddr(false, a); p.dst = a }

func (p *packet) setAddr(src bool, a netip.Addr) {
	var at int
	var old, new []byte
	if p.b[0]>>4 == 4 {
		at = 16
		if src {
			at = 12
		}
		n := a.As4()
		old, new = append([]byte(nil), p.b[at:at+4]...), n[:]
		ip := binary.BigEndian.Uint16(p.b[10:12])
		binary.BigEndian.PutUint16(p.b[10:12], csumReplace(ip, old, new))
	} else {
		at = 24
		if src {
			at = 8
		}
		n := a.As16()
		old, new = append([]byte(nil), p.b[at:at+16]...), n[:]
	}
	copy(p.b[at:], new)
	l4 := p.b[p.l4:]
	switch p.proto {
	case protoTCP:
		binary.BigEndian.PutUint16(l4[16:18], csumReplace(binary.BigEndian.Uint16(l4[16:18]), old, new))
	case protoUDP:
		sum := binary.BigEndian.Uint16(l4[6:8])
		if sum == 0 && p.b[0]>>4 == 4 {
			return // an IPv4 datagram without a checksum
		}
		sum = csumReplace(sum, old, new)
		if sum == 0 {
			sum = 0xffff // zero means "none" in UDP
		}
		binary.BigEndian.PutUint16(l4[6:8], sum)
	}
}

// csumReplace updates an Internet checksum for old's 16-bit words replaced
// by new's: HC' = ~(~HC + ~m + m').
func csumReplace(sum uint16, old, new []byte) uint16 {
	acc := uint32(^sum)
	for i := 0; i+1 < len(old); i += 2 {
		acc += uint32(^binary.BigEndian.Uint16(old[i:]))
		acc += uint32(binary.BigEndian.Uint16(new[i:]))
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// checksum is the Internet checksum of b, with initial as a partial sum.
func checksum(b []byte, initial uint32) uint16 {
	acc := initial
	for ; len(b) >= 2; b = b[2:] {
		acc += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// putIPv4 writes the 20-byte IPv4 header of b, a whole packet carrying
// proto, and returns the pseudo-header's part of its transport checksum.
func putIPv4(b []byte, src, dst netip.Addr, proto uint8) (pseudo uint32) {
	b[0], b[8], b[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:12], checksum(b[:20], 0))
	for i := 12; i < 20; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return pseudo + uint32(proto) + uint32(len(b)-20)
}

// udp4 builds an IPv4 UDP datagram: the liveness probe's.
func udp4(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	pseudo := putIPv4(b, src.Addr(), dst.Addr(), protoUDP)
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(8+len(payload)))
	copy(u[8:], payload)
	sum := checksum(u, pseudo)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:8], sum)
	return b
}

// putIPv6 writes the 40-byte IPv6 header of b, a whole packet carrying
// proto, and returns the pseudo-header's part of its transport checksum.
func putIPv6(b []byte, src, dst netip.Addr, proto uint8) (pseudo uint32) {
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(b)-40))
	b[6], b[7] = proto, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	for i := 8; i < 40; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return pseudo + uint32(proto) + uint32(len(b)-40)
}

// rst builds a TCP reset from src to dst with sequence number seq, after
// offset bytes of room for the TUN device's own header.
func rst(src, dst netip.AddrPort, seq uint32, offset int) []byte {
	ip := 20
	if dst.Addr().Is6() {
		ip = 40
	}
	buf := make([]byte, offset+ip+20)
	b := buf[offset:]
	var pseudo uint32
	if ip == 20 {
		pseudo = putIPv4(b, src.Addr(), dst.Addr(), protoTCP)
	} else {
		pseudo = putIPv6(b, src.Addr(), dst.Addr(), protoTCP)
	}
	t := b[ip:]
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], seq)
	t[12], t[13] = 5<<4, tcpRST
	binary.BigEndian.PutUint16(t[16:18], checksum(t, pseudo))
	return buf
}
