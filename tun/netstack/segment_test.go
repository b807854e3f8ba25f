package netstack

import (
	"bytes"
	"crypto/rand"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// bigSegment builds a TCP packet as the stack hands a device that cuts:
// headers whole (with 12 bytes of options), the payload larger than the
// MSS, the checksum holding only the pseudo-header's sum.
func bigSegment(t *testing.T, v6 bool, payload []byte, flags header.TCPFlags) []byte {
	t.Helper()
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	tcpLen := header.TCPMinimumSize + len(opts) + len(payload)
	var p []byte
	var src, dst tcpip.Address
	if v6 {
		src = tcpip.AddrFrom16([16]byte{0xfd, 0x74, 15: 1})
		dst = tcpip.AddrFrom16([16]byte{0xfd, 0x74, 15: 2})
		p = make([]byte, header.IPv6MinimumSize+tcpLen)
		header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		src = tcpip.AddrFrom4([4]byte{198, 19, 0, 1})
		dst = tcpip.AddrFrom4([4]byte{198, 19, 0, 2})
		p = make([]byte, header.IPv4MinimumSize+tcpLen)
		ip := header.IPv4(p)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), ID: 65530, TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	l4 := len(p) - tcpLen
	tcp := header.TCP(p[l4:])
	tcp.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, SeqNum: 0xffffff00, AckNum: 7,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 512})
	copy(p[l4+header.TCPMinimumSize:], opts)
	copy(p[l4+header.TCPMinimumSize+len(opts):], payload)
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen)))
	return p
}

// checkTCP says what is wrong with one packet: its lengths, its checksums.
func checkTCP(t *testing.T, b []byte) header.TCP {
	t.Helper()
	l4, payload, ok := tcpHeaders(b)
	if !ok {
		t.Fatalf("not a TCP packet: % x", b[:40])
	}
	var src, dst tcpip.Address
	if header.IPVersion(b) == header.IPv4Version {
		ip := header.IPv4(b)
		if int(ip.TotalLength()) != len(b) || !ip.IsChecksumValid() {
			t.Fatalf("IPv4 header: length %d of %d, checksum valid %v", ip.TotalLength(), len(b), ip.IsChecksumValid())
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv6(b)
		if int(ip.PayloadLength())+header.IPv6MinimumSize != len(b) {
			t.Fatalf("IPv6 payload length %d of %d", ip.PayloadLength(), len(b))
		}
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	tcp := header.TCP(b[l4:])
	data := b[payload:]
	if !tcp.IsChecksumValid(src, dst, checksum.Checksum(data, 0), uint16(len(data))) {
		t.Fatalf("TCP checksum invalid")
	}
	return tcp
}

func TestSegmentTCP(t *testing.T) {
	const mss = 1368
	for _, v6 := range []bool{false, true} {
		payload := make([]byte, 20*mss+77)
		rand.Read(payload)
		flags := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
		p := bigSegment(t, v6, payload, flags)
		l4, off, ok := tcpHeaders(p)
		if !ok {
			t.Fatal("the test's packet does not parse")
		}
		// Three buffers at a time, as a Read with little room would take it.
		var got []byte
		var segs int
		for next := 0; next < len(payload); {
			out := [][]byte{make([]byte, 16+1500), make([]byte, 16+1500), make([]byte, 16+1500)}
			sizes := make([]int, len(out))
			n, nx := segmentTCP(p, l4, off, mss, next, out, sizes, 16)
			if n == 0 || nx <= next {
				t.Fatalf("no progress at %d", next)
			}
			for i := range n {
				b := out[i][16 : 16+sizes[i]]
				tcp := checkTCP(t, b)
				if want := uint32(0xffffff00) + uint32(len(got)); tcp.SequenceNumber() != want {
					t.Fatalf("segment %d: seq %#x, want %#x", segs, tcp.SequenceNumber(), want)
				}
				last := len(got)+len(tcp.Payload()) == len(payload)
				f := tcp.Flags()
				if f.Contains(header.TCPFlagFin) != last || f.Contains(header.TCPFlagPsh) != last ||
					f.Contains(header.TCPFlagCwr) != (segs == 0) || !f.Contains(header.TCPFlagAck) {
					t.Fatalf("segment %d (last %v): flags %v", segs, last, f)
				}
				if !last && len(tcp.Payload()) != mss {
					t.Fatalf("segment %d carries %d bytes, want %d", segs, len(tcp.Payload()), mss)
				}
				if !v6 && header.IPv4(b).ID() != uint16(65530+segs) {
					t.Fatalf("segment %d: IPv4 ID %d", segs, header.IPv4(b).ID())
				}
				if len(tcp.Options()) != 12 {
					t.Fatalf("segment %d lost its options", segs)
				}
				got = append(got, tcp.Payload()...)
				segs++
			}
			next = nx
		}
		if !bytes.Equal(got, payload) || segs != 21 {
			t.Fatalf("v6 %v: %d segments carry %d bytes, want 21 carrying the payload", v6, segs, len(got))
		}
	}
}

func TestFinishChecksum(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		payload := make([]byte, 1001)
		rand.Read(payload)
		p := bigSegment(t, v6, payload, header.TCPFlagAck)
		l4, _, _ := tcpHeaders(p)
		finishChecksum(p, l4)
		checkTCP(t, p)
	}
}

// TestTCPHeadersRefuses anything the segmenter must not cut.
func TestTCPHeadersRefuses(t *testing.T) {
	good := bigSegment(t, false, make([]byte, 100), header.TCPFlagAck)
	for name, mangle := range map[string]func([]byte) []byte{
		"UDP":          func(p []byte) []byte { p[9] = uint8(header.UDPProtocolNumber); return p },
		"a fragment":   func(p []byte) []byte { p[6] |= 0x20; return p },
		"short":        func(p []byte) []byte { return p[:30] },
		"offset large": func(p []byte) []byte { p[20+12] = 0xf0; return p[:60] },
		"not IP":       func(p []byte) []byte { p[0] = 0x00; return p },
	} {
		p := mangle(bytes.Clone(good))
		if _, _, ok := tcpHeaders(p); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}
