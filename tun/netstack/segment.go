package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A stack that is a device (NewDevice) lets TCP hand it segments of up to
// 64 KiB, as a kernel hands a NIC with TSO, and cuts them into MSS-sized
// packets itself: TCP then does its per-segment work once per 64 KiB, not
// once per 1380 bytes, which at the WireGuard path's MTU is most of the
// manager's cost of a download. Its TCP packets carry only the
// pseudo-header's sum in their checksum (the kernel's CHECKSUM_PARTIAL),
// which the segmenter completes.

// tcpHeaders finds an IPv4 or IPv6 TCP packet's headers: where TCP's
// header starts and where its payload does; ok is false for anything else
// (an IPv4 packet with options is fine, IPv6 extension headers are not,
// and the stack sends none).
func tcpHeaders(p []byte) (l4, payload int, ok bool) {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		if len(p) < header.IPv4MinimumSize {
			return 0, 0, false
		}
		ip := header.IPv4(p)
		l4 = int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || l4 < header.IPv4MinimumSize || ip.FragmentOffset() != 0 || ip.More() {
			return 0, 0, false
		}
	case header.IPv6Version:
		if len(p) < header.IPv6MinimumSize || header.IPv6(p).NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0, 0, false
		}
		l4 = header.IPv6MinimumSize
	default:
		return 0, 0, false
	}
	if len(p) < l4+header.TCPMinimumSize {
		return 0, 0, false
	}
	payload = l4 + int(header.TCP(p[l4:]).DataOffset())
	if payload < l4+header.TCPMinimumSize || payload > len(p) {
		return 0, 0, false
	}
	return l4, payload, true
}

// finishChecksum completes a TCP packet's checksum, which holds the
// pseudo-header's sum: the sum over the segment with it in place is the
// whole sum.
func finishChecksum(p []byte, l4 int) {
	tcp := header.TCP(p[l4:])
	tcp.SetChecksum(^checksum.Checksum(p[l4:], 0))
}

// segmentTCP cuts the TCP packet p (its headers whole, its payload larger
// than mss) into packets of at most mss payload bytes each, starting at
// payload offset from. It writes them to out[i][off:] for i from 0 on and
// their lengths to sizes, and returns how many it wrote and the payload
// offset to go on from (len of the payload once all of it is out). Each
// packet gets its own length, IPv4 ID and header checksum, sequence number
// and whole TCP checksum; FIN and PSH stay on the last, CWR on the first,
// as Linux's GSO does.
func segmentTCP(p []byte, l4, payload, mss int, from int, out [][]byte, sizes []int, off int) (n, next int) {
	hdr := p[:payload]
	data := p[payload:]
	tcpLen := payload - l4
	ip4 := header.IPVersion(p) == header.IPv4Version
	seq := binary.BigEndian.Uint32(p[l4+4:])
	flags := header.TCP(p[l4:]).Flags()
	var src, dst tcpip.Address
	var id uint16
	if ip4 {
		ip := header.IPv4(p)
		src, dst, id = ip.SourceAddress(), ip.DestinationAddress(), ip.ID()
	} else {
		ip := header.IPv6(p)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	for next = from; next < len(data) && n < len(out); n++ {
		end := min(next+mss, len(data))
		if len(out[n]) < off+payload+end-next {
			break // cannot happen with WireGuard's buffers; TCP resends
		}
		b := out[n][off : off+payload+end-next]
		copy(b, hdr)
		copy(b[payload:], data[next:end])
		total := len(b)
		if ip4 {
			ip := header.IPv4(b)
			ip.SetTotalLength(uint16(total))
			ip.SetID(id + uint16(next/mss))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(b).SetPayloadLength(uint16(total - header.IPv6MinimumSize))
		}
		tcp := header.TCP(b[l4:])
		tcp.SetSequenceNumber(seq + uint32(next))
		f := flags
		if next != 0 {
			f &^= header.TCPFlagCwr
		}
		if end != len(data) {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		tcp.SetFlags(uint8(f))
		tcp.SetChecksum(0)
		sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen+end-next))
		tcp.SetChecksum(^checksum.Checksum(b[l4:], sum))
		sizes[n] = total
		next = end
	}
	return n, next
}
