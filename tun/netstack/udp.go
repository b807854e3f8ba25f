package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tunnel.dev/tunnel/rpc"
)

// failedUDPHold is how long a flow whose dial failed swallows its
// datagrams before a new one may dial again: a client that retries every
// second does not cost a dial (and a log line) every second.
const failedUDPHold = 5 * time.Second

// forwardUDP handles the first datagram of a flow, on the packet path. It
// creates the flow's endpoint at once, so the datagrams that follow queue
// there while the stream is dialed, and dials on a goroutine.
func (s *Stack) forwardUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	src := addrPort(id.RemoteAddress, id.RemotePort)
	dst := addrPort(id.LocalAddress, id.LocalPort)
	if !unicast(dst.Addr()) {
		return
	}
	select {
	case s.udpSem <- struct{}{}:
	default:
		s.stats.droppedDials.Add(1)
		s.logLimited("udp cap", "too many UDP flows dialing at once: dropping new ones", "max", s.cfg.MaxInflightDials)
		return
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		<-s.udpSem
		s.logLimited("udp endpoint", "create UDP endpoint", "src", src, "dst", dst, "err", err)
		return
	}
	f := &udpFlow{app: gonet.NewUDPConn(&wq, ep), src: src, dst: dst}
	if !s.goStart() {
		<-s.udpSem
		f.app.Close()
		return
	}
	go s.runUDP(f)
}

// unicast reports whether a flow to a may be forwarded: a stream reaches one
// destination, not a group.
func unicast(a netip.Addr) bool {
	return !a.IsMulticast() && !a.IsUnspecified() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// udpFlow is one forwarded flow: the application's endpoint in the stack
// (bound to the destination, connected to the source, so answers leave
// from the address the application sent to) and the stream to the cluster.
type udpFlow struct {
	app      *gonet.UDPConn
	src, dst netip.AddrPort
	last     atomic.Int64 // UnixNano of the last datagram either way

	mu     sync.Mutex // guards following
	stream net.Conn
	closed bool
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

// setStream attaches the dialed stream; false if the flow was closed
// meanwhile.
func (f *udpFlow) setStream(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.stream = c
	return true
}

func (f *udpFlow) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	f.app.Close()
	if f.stream != nil {
		f.stream.Close()
	}
}

func (f *udpFlow) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// runUDP dials the flow's stream, then copies datagrams both ways until
// the flow idles out, either side closes, or the stack does.
func (s *Stack) runUDP(f *udpFlow) {
	defer s.wg.Done()
	if !s.track(f) {
		<-s.udpSem
		f.close()
		return
	}
	defer s.untrack(f)
	defer f.close()

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	stream, err := s.dialer.DialStream(ctx, rpc.KindUDP, f.src, f.dst)
	cancel()
	<-s.udpSem
	if err != nil {
		s.dialFailed(rpc.KindUDP, f.src, f.dst, err)
		s.discard(f, min(failedUDPHold, s.cfg.UDPIdleTimeout))
		return
	}
	if !f.setStream(stream) {
		stream.Close()
		return
	}
	flowStarted(&s.stats.udpActive, &s.stats.udpTotal)
	defer flowEnded(&s.stats.udpActive)
	f.touch()

	if !s.goStart() {
		return
	}
	go func() {
		defer s.wg.Done()
		defer f.close()
		s.udpDown(f, stream)
	}()
	s.udpUp(f, stream)
}

// udpUp frames the application's datagrams onto the stream until the flow
// has been idle for UDPIdleTimeout or fails.
func (s *Stack) udpUp(f *udpFlow, stream net.Conn) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	idle := s.cfg.UDPIdleTimeout
	// One deadline, moved on only when it fires: cheaper than one per
	// datagram.
	f.app.SetReadDeadline(time.Now().Add(idle))
	for {
		n, err := f.app.Read(buf)
		if isTimeout(err) {
			last := time.Unix(0, f.last.Load())
			if time.Since(last) < idle {
				f.app.SetReadDeadline(last.Add(idle))
				continue
			}
			s.log.Debug("UDP flow idle", "src", f.src, "dst", f.dst)
			return
		}
		if err != nil {
			return
		}
		f.touch()
		// Counted first, so the answer is never seen before its question.
		s.stats.sent.Add(uint64(n))
		if err := rpc.WriteDatagram(stream, buf[:n]); err != nil {
			return
		}
	}
}

// udpDown sends the stream's datagrams to the application until the stream
// ends.
func (s *Stack) udpDown(f *udpFlow, stream net.Conn) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		n, err := rpc.ReadDatagram(stream, buf)
		if err != nil {
			return
		}
		f.touch()
		if _, err := f.app.Write(buf[:n]); err != nil {
			if f.isClosed() {
				return
			}
			// One datagram the stack would not send (too large, say):
			// the flow goes on.
			s.logLimited("udp write "+f.dst.String(), "send UDP datagram to the application", "dst", f.dst, "err", err)
			continue
		}
		s.stats.received.Add(uint64(n))
	}
}

// discard swallows the flow's datagrams for d, so a failed destination is
// not dialed again for each of them.
func (s *Stack) discard(f *udpFlow, d time.Duration) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	f.app.SetReadDeadline(time.Now().Add(d))
	for {
		if _, err := f.app.Read(*bp); err != nil {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
