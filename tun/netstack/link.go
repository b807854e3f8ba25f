package netstack

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// linkQueueLen bounds packets the stack has sent but the device has not
// taken yet. A full queue drops packets, which TCP reads as congestion, so
// it holds more than a full send window of MTU-sized segments.
const linkQueueLen = 8192

// cutQueueLen bounds the queue of a link whose TCP hands it 64 KiB
// segments: 32 MiB at most, not 512.
const cutQueueLen = 512

// link is the stack's NIC: a channel endpoint whose outbound queue the write
// loop drains into the device, plus GRO on the way in, so a burst of
// segments of one connection climbs the stack as one large packet.
type link struct {
	*channel.Endpoint

	mu   sync.RWMutex // guards following
	disp stack.NetworkDispatcher

	gro gro.GRO // used by the read loop only
}

// With cut, TCP hands the link whole segments of up to 64 KiB to cut to
// the MSS (the device's Read does, segment.go).
func newLink(mtu int, cut bool) *link {
	queue := linkQueueLen
	if cut {
		queue = cutQueueLen
	}
	l := &link{Endpoint: channel.New(queue, uint32(mtu), "")}
	// Packets come from the local kernel, which computed (or, with
	// offloads, wireguard's tun completed) their checksums: checking them
	// again only costs time.
	l.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	// TCP builds segments of up to 32 KiB and splits them itself, sharing
	// the payload: far less work per byte than one segment per MSS where
	// the MTU is small. With cut it leaves the split to the device, as to
	// a NIC with TSO, and does less still.
	l.SupportedGSOKind = stack.GVisorGSOSupported
	if cut {
		l.SupportedGSOKind = stack.HostGSOSupported
	}
	l.gro.Init(true)
	l.gro.Dispatcher = l
	return l
}

// GSOMaxSize implements stack.GSOEndpoint: a link that cuts takes the
// largest IP packet, as Linux's TSO does, so TCP's work per byte halves
// again; otherwise channel's 32 KiB.
func (l *link) GSOMaxSize() uint32 {
	if l.SupportedGSOKind == stack.HostGSOSupported {
		return maxMTU
	}
	return l.Endpoint.GSOMaxSize()
}

// Attach implements stack.LinkEndpoint; it keeps the NIC so GRO can hand
// packets to it.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.disp = d
	l.mu.Unlock()
	l.Endpoint.Attach(d)
}

func (l *link) dispatcher() stack.NetworkDispatcher {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.disp
}

// DeliverNetworkPacket implements stack.NetworkDispatcher for GRO.
func (l *link) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if d := l.dispatcher(); d != nil {
		d.DeliverNetworkPacket(proto, pkt)
	}
}

// DeliverLinkPacket implements stack.NetworkDispatcher for GRO.
func (l *link) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if d := l.dispatcher(); d != nil {
		d.DeliverLinkPacket(proto, pkt)
	}
}

// inject queues one IP packet read from the device; flush delivers what
// inject queued. The packet's bytes are copied.
func (l *link) inject(p []byte) bool {
	var proto tcpip.NetworkProtocolNumber
	switch header.IPVersion(p) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		return false
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = true
	l.gro.Enqueue(pkt)
	pkt.DecRef()
	return true
}

func (l *link) flush() { l.gro.Flush() }

// serialize copies pkt's bytes into buf from off on and returns buf cut to
// the end of the packet (its capacity kept, for the device's GRO).
func serialize(pkt *stack.PacketBuffer, buf []byte, off int) []byte {
	n := off
	for _, s := range pkt.AsSlices() {
		n += copy(buf[n:], s)
	}
	return buf[:n]
}
