package wgpath

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// tcp4 builds an IPv4 TCP segment with correct checksums.
func tcp4(src, dst netip.AddrPort, flags uint8, payload []byte) []byte {
	b := make([]byte, 40+len(payload))
	pseudo := putIPv4(b, src.Addr(), dst.Addr(), protoTCP)
	putTCP(b[20:], src, dst, flags, payload, pseudo)
	return b
}

// tcp6 builds an IPv6 TCP segment (an ACK) with a correct checksum.
func tcp6(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, 60+len(payload))
	pseudo := putIPv6(b, src.Addr(), dst.Addr(), protoTCP)
	putTCP(b[40:], src, dst, tcpACK, payload, pseudo)
	return b
}

// putTCP writes a TCP header and payload into t, summed with pseudo.
func putTCP(t []byte, src, dst netip.AddrPort, flags uint8, payload []byte, pseudo uint32) {
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	t[12], t[13] = 5<<4, flags
	copy(t[20:], payload)
	binary.BigEndian.PutUint16(t[16:18], checksum(t, pseudo))
}

func pseudo4(b []byte) uint32 {
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return sum + uint32(b[9]) + uint32(len(b)-20)
}

// valid4 says whether an IPv4 packet's header and TCP or UDP checksums hold.
func valid4(b []byte) bool {
	return checksum(b[:20], 0) == 0 && checksum(b[20:], pseudo4(b)) == 0
}

func TestRewriteKeepsChecksums(t *testing.T) {
	laptop := netip.MustParseAddrPort("10.210.0.2:40000")
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	tunnel := netip.MustParseAddr("198.19.3.7")
	for name, b := range map[string][]byte{
		"tcp":         tcp4(laptop, svc, tcpSYN, nil),
		"tcp payload": tcp4(laptop, svc, tcpACK, []byte("GET / HTTP/1.1\r\n\r\nodd")),
		"udp":         udp4(laptop, svc, []byte("a datagram")),
	} {
		if !valid4(b) {
			t.Fatalf("%s: the test packet is wrong", name)
		}
		p, ok := parse(b)
		if !ok || p.src != laptop.Addr() || p.dst != svc.Addr() || p.sport != laptop.Port() || p.dport != svc.Port() {
			t.Fatalf("%s: parse %+v %v", name, p, ok)
		}
		p.setSrc(tunnel)
		if !valid4(b) {
			t.Errorf("%s: checksums broken by setSrc", name)
		}
		p.setDst(netip.MustParseAddr("10.244.1.9"))
		if q, _ := parse(b); !valid4(b) || q.src != tunnel || q.dst != netip.MustParseAddr("10.244.1.9") {
			t.Errorf("%s: after setDst: %+v, valid %v", name, q, valid4(b))
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good := tcp4(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), tcpSYN, nil)
	frag := append([]byte(nil), good...)
	frag[6] |= 0x20 // more fragments
	icmp := append([]byte(nil), good...)
	icmp[9] = 1
	for name, b := range map[string][]byte{
		"empty": nil, "short": good[:30], "fragment": frag, "icmp": icmp, "version 5": append([]byte{0x55}, good[1:]...),
	} {
		if _, ok := parse(b); ok {
			t.Errorf("%s parsed", name)
		}
	}
}

func TestFlows(t *testing.T) {
	now := time.Unix(1000, 0)
	laptop := netip.MustParseAddrPort("10.210.0.2:40000")
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	pkt := func(flags uint8, out bool) *packet {
		var b []byte
		if out {
			b = tcp4(laptop, svc, flags, nil)
		} else {
			b = tcp4(svc, netip.AddrPortFrom(netip.MustParseAddr("198.19.0.5"), laptop.Port()), flags, nil)
		}
		p, _ := parse(b)
		return &p
	}
	yes, no := func() bool { return true }, func() bool { return false }
	ft := newFlows(2)
	if _, ok := ft.outbound(pkt(tcpACK, true), yes, now); ok {
		t.Error("a segment of no connection took the path")
	}
	if _, ok := ft.outbound(pkt(tcpSYN, true), no, now); ok {
		t.Error("a SYN took a closed path")
	}
	if src, ok := ft.outbound(pkt(tcpSYN, true), yes, now); !ok || src != laptop.Addr() {
		t.Fatalf("a SYN on an open path: %v %v", src, ok)
	}
	if src, ok := ft.inbound(pkt(tcpSYN|tcpACK, false), now); !ok || src != laptop.Addr() {
		t.Fatalf("its SYN-ACK: %v %v", src, ok)
	}
	if _, ok := ft.outbound(pkt(tcpACK, true), no, now); !ok {
		t.Error("a connection left its path when the path closed to new ones")
	}
	// A half-close keeps the flow; both FINs close it after a while.
	ft.outbound(pkt(tcpFIN|tcpACK, true), yes, now)
	if ft.sweep(now.Add(time.Hour)) != 1 {
		t.Error("a half-closed connection was forgotten")
	}
	ft.inbound(pkt(tcpFIN|tcpACK, false), now.Add(time.Hour))
	if ft.sweep(now.Add(time.Hour+tcpClosing+time.Second)) != 0 {
		t.Error("a closed connection was kept")
	}
	// At most max flows; past it new connections stay off the path.
	for i := range 3 {
		b := tcp4(netip.AddrPortFrom(laptop.Addr(), uint16(50000+i)), svc, tcpSYN, nil)
		p, _ := parse(b)
		if _, ok := ft.outbound(&p, yes, now); ok != (i < 2) {
			t.Errorf("flow %d taken: %v", i, ok)
		}
	}
	if tcpOpen, _, tcpTotal, _ := ft.counts(); tcpOpen != 2 || tcpTotal != 3 {
		t.Errorf("counts: %d open, %d in all", tcpOpen, tcpTotal)
	}
	ft.reset(0)
	if ft.len() != 0 {
		t.Error("reset kept flows")
	}
}

func pseudo6(b []byte) uint32 {
	var sum uint32
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return sum + protoTCP + uint32(len(b)-40)
}

func TestRewriteKeepsChecksumsIPv6(t *testing.T) {
	b := tcp6(netip.MustParseAddrPort("[fd00:210::2]:40000"), netip.MustParseAddrPort("[fd00:96::10]:80"), []byte("an odd payload"))
	if checksum(b[40:], pseudo6(b)) != 0 {
		t.Fatal("the test packet is wrong")
	}
	p, ok := parse(b)
	if !ok {
		t.Fatal("an IPv6 TCP segment did not parse")
	}
	p.setSrc(netip.MustParseAddr("fd74:756e:6e65:6c00::9"))
	p.setDst(netip.MustParseAddr("fd00:244::7"))
	if checksum(b[40:], pseudo6(b)) != 0 {
		t.Error("the TCP checksum broke on rewriting IPv6 addresses")
	}
}

// FuzzParse feeds the parser what a network could send it (the TUN
// device's packets, and what comes out of the tunnel): it never panics,
// and a packet it takes keeps its checksums through an address rewrite.
func FuzzParse(f *testing.F) {
	laptop := netip.MustParseAddrPort("10.210.0.2:40000")
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	f.Add(tcp4(laptop, svc, tcpSYN, nil))
	f.Add(tcp4(laptop, svc, tcpACK, []byte("payload")))
	f.Add(udp4(laptop, svc, []byte("datagram")))
	f.Add(tcp6(netip.MustParseAddrPort("[fd00::2]:1"), netip.MustParseAddrPort("[fd00::3]:2"), []byte("v6")))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parse(b)
		if !ok {
			return
		}
		wasValid := p.b[0]>>4 == 4 && p.proto == protoTCP && valid4(p.b)
		if p.src.Is4() {
			p.setSrc(netip.MustParseAddr("198.19.0.7"))
			p.setDst(netip.MustParseAddr("10.244.0.9"))
		} else {
			p.setSrc(netip.MustParseAddr("fd74:756e:6e65:6c00::7"))
			p.setDst(netip.MustParseAddr("fd00:244::9"))
		}
		q, ok := parse(p.b)
		if !ok || q.src != p.src || q.dst != p.dst || q.sport != p.sport || q.dport != p.dport {
			t.Fatalf("after a rewrite the packet reads %+v, %v", q, ok)
		}
		if wasValid && !valid4(p.b) {
			t.Fatal("a rewrite broke a valid packet's checksums")
		}
	})
}

// TestResetChecksums: the resets the path writes to the laptop's kernel
// carry right checksums, IPv4 and IPv6, after the room asked for.
func TestResetChecksums(t *testing.T) {
	for _, c := range []struct{ src, dst string }{
		{"10.96.0.10:80", "10.210.0.2:40000"},
		{"[fd00::10]:80", "[fd00::2]:40000"},
	} {
		src, dst := netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
		b := rst(src, dst, 4242, 16)[16:]
		p, ok := parse(b)
		if !ok || p.flags != tcpRST || p.src != src.Addr() || p.dst != dst.Addr() || p.sport != src.Port() || p.dport != dst.Port() {
			t.Fatalf("%s: %+v", c.src, p)
		}
		var sum uint16
		if src.Addr().Is4() {
			sum = checksum(b[20:], pseudo4(b))
			if checksum(b[:20], 0) != 0 {
				t.Errorf("%s: IPv4 header checksum", c.src)
			}
		} else {
			sum = checksum(b[40:], pseudo6(b))
		}
		if sum != 0 || binary.BigEndian.Uint32(b[len(b)-16:]) != 4242 {
			t.Errorf("%s: TCP checksum %#x, sequence %d", c.src, sum, binary.BigEndian.Uint32(b[len(b)-16:]))
		}
	}
}
