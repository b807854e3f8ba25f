package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tunnel.dev/tunnel/rpc"
)

// forwardTCP handles an application's SYN, on its own goroutine: it dials
// the destination first and completes the handshake only once the cluster
// side has answered, so a refused dial is a refused connect (a reset), not
// an accepted connection that closes at once. gVisor's forwarder bounds
// how many run at once (MaxInflightDials) and drops SYNs past that, which
// the application resends.
func (s *Stack) forwardTCP(r *tcp.ForwarderRequest) {
	if !s.goStart() {
		r.Complete(false)
		return
	}
	defer s.wg.Done()

	id := r.ID()
	src := addrPort(id.RemoteAddress, id.RemotePort)
	dst := addrPort(id.LocalAddress, id.LocalPort)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	stream, err := s.dialer.DialStream(ctx, rpc.KindTCP, src, dst)
	cancel()
	if err == nil && s.ctx.Err() != nil {
		stream.Close()
		err = s.ctx.Err() // closing: no new connections
	}
	if errors.Is(err, ErrBusy) {
		// The dialer's own bound, as gVisor's: the SYN goes unanswered
		// and the application sends it again.
		s.stats.droppedDials.Add(1)
		r.Complete(false)
		return
	}
	if err != nil {
		s.dialFailed(rpc.KindTCP, src, dst, err)
		r.Complete(true)
		return
	}

	var wq waiter.Queue
	ep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		// The application gave up (or reset) while we dialed.
		r.Complete(true)
		stream.Close()
		s.log.Debug("complete TCP handshake", "src", src, "dst", dst, "err", tcpErr)
		return
	}
	r.Complete(false)
	s.keepAlive(ep)
	if sb, ok := stream.(interface{ SendBuffer() int }); ok && sb.SendBuffer() > 0 {
		// gVisor leaves the bound to the socket layer, which is ours.
		ep.SocketOptions().SetSendBufferSize(int64(min(sb.SendBuffer(), s.cfg.MaxSendBuffer)), true)
	}
	app := gonet.NewTCPConn(&wq, ep)
	f := &tcpFlow{app: app, ep: ep, stream: stream}
	if !s.track(f) {
		f.close()
		return
	}
	defer s.untrack(f)
	flowStarted(&s.stats.tcpActive, &s.stats.tcpTotal)
	defer flowEnded(&s.stats.tcpActive)
	s.pipeTCP(f)
}

// keepAlive turns on Config.KeepAlive's probes for ep.
func (s *Stack) keepAlive(ep tcpip.Endpoint) {
	if d := s.cfg.KeepAlive; d > 0 {
		idle, every := tcpip.KeepaliveIdleOption(d), tcpip.KeepaliveIntervalOption(d/6)
		ep.SetSockOpt(&idle)
		ep.SetSockOpt(&every)
		ep.SetSockOptInt(tcpip.KeepaliveCountOption, 3)
		ep.SocketOptions().SetKeepAlive(true)
	}
}

// tcpFlow is one forwarded connection: the application's end in the stack
// and the stream to the cluster.
type tcpFlow struct {
	app    *gonet.TCPConn
	ep     tcpip.Endpoint
	stream net.Conn
	once   sync.Once
}

// close ends both sides at once; the application sees a reset, since a
// connection cut short must not look like one that finished.
func (f *tcpFlow) close() {
	f.once.Do(func() {
		f.ep.Abort()
		f.app.Close()
		f.stream.Close()
	})
}

// pipeTCP copies both ways until both directions are done. A direction that
// ends cleanly passes on the half-close; one that fails ends the flow.
func (s *Stack) pipeTCP(f *tcpFlow) {
	up := make(chan error, 1)
	if !s.goStart() {
		f.close()
		return
	}
	go func() {
		defer s.wg.Done()
		err := s.copyCounted(f.stream, f.app, &s.stats.sent)
		if err == nil {
			err = closeWrite(f.stream)
		}
		if err != nil {
			f.close()
		}
		up <- err
	}()
	err := s.copyCounted(f.app, f.stream, &s.stats.received)
	if err == nil {
		err = f.app.CloseWrite()
	}
	if err != nil {
		f.close()
	}
	<-up
	// Both directions finished: a normal close (FIN), not a reset.
	f.once.Do(func() {
		f.app.Close()
		f.stream.Close()
	})
}

// closeWrite half-closes c if it can; if not, the other direction decides
// when the flow ends.
func closeWrite(c net.Conn) error {
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return nil
}

// copyBufSize is the size of the buffers flows copy through: large enough
// that a bulk transfer costs few reads and writes.
const copyBufSize = 64 << 10

// copyCounted copies src to dst until src's EOF (nil) or an error, adding
// the bytes written to n.
func (s *Stack) copyCounted(dst io.Writer, src io.Reader, n *atomic.Uint64) error {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(uint64(nw))
			if werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
