package netstack

import "sync/atomic"

// Stats counts what the stack forwarded since New.
type Stats struct {
	TCPActive, TCPTotal, UDPActive, UDPTotal uint64 // flows whose dial succeeded
	BytesSent, BytesReceived                 uint64 // payload to and from the cluster
	DialErrors                               uint64
	DialsRefused                             uint64 // of DialErrors, refused by the manager's reach rule
	DroppedDials                             uint64 // SYNs and new UDP flows dropped over MaxInflightDials
}

type counters struct {
	tcpActive, tcpTotal, udpActive, udpTotal atomic.Uint64
	sent, received                           atomic.Uint64
	dialErrors, droppedDials                 atomic.Uint64
	dialsRefused                             atomic.Uint64
}

// Stats returns the stack's counters.
func (s *Stack) Stats() Stats {
	c := &s.stats
	return Stats{
		TCPActive:     c.tcpActive.Load(),
		TCPTotal:      c.tcpTotal.Load(),
		UDPActive:     c.udpActive.Load(),
		UDPTotal:      c.udpTotal.Load(),
		BytesSent:     c.sent.Load(),
		BytesReceived: c.received.Load(),
		DialErrors:    c.dialErrors.Load(),
		DialsRefused:  c.dialsRefused.Load(),
		DroppedDials:  c.droppedDials.Load() + s.ipstack.Stats().TCP.ForwardMaxInFlightDrop.Value(),
	}
}

// flowStarted and flowEnded keep a kind's active and total counts.
func flowStarted(active, total *atomic.Uint64) {
	active.Add(1)
	total.Add(1)
}

func flowEnded(active *atomic.Uint64) { active.Add(^uint64(0)) }
