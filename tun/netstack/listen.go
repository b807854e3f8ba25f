package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Listen binds a TCP service inside the stack at addr: the stack then
// answers connections to addr itself instead of forwarding them. Other
// ports of the same address are still forwarded.
func (s *Stack) Listen(addr netip.AddrPort) (net.Listener, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if err := s.claim(addr.Addr()); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	l, err := s.listenTCP(addr)
	if err != nil {
		s.release(addr.Addr())
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	ln := &listener{Listener: l}
	ln.bound = bound{s: s, addr: addr.Addr(), inner: l}
	if !s.track(&ln.bound) {
		ln.close()
		return nil, fmt.Errorf("listen on %s: %w", addr, net.ErrClosed)
	}
	return ln, nil
}

// listenBacklog is the queue of connections a listener has not accepted.
const listenBacklog = 128

// listenTCP is gonet.ListenTCP with SO_REUSEADDR: the connections of a
// listener that closed linger in TIME_WAIT, and must not keep a new one
// from binding the port.
func (s *Stack) listenTCP(addr netip.AddrPort) (*gonet.TCPListener, error) {
	fa, proto := fullAddr(addr)
	var wq waiter.Queue
	ep, err := s.ipstack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if err != nil {
		return nil, fmt.Errorf("new endpoint: %s", err)
	}
	ep.SocketOptions().SetReuseAddress(true)
	if err := ep.Bind(fa); err != nil {
		ep.Close()
		return nil, fmt.Errorf("bind: %s", err)
	}
	if err := ep.Listen(listenBacklog); err != nil {
		ep.Close()
		return nil, fmt.Errorf("listen: %s", err)
	}
	return gonet.NewTCPListener(s.ipstack, &wq, ep), nil
}

// ListenPacket binds a UDP service inside the stack at addr, as Listen
// does for TCP.
func (s *Stack) ListenPacket(addr netip.AddrPort) (net.PacketConn, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if err := s.claim(addr.Addr()); err != nil {
		return nil, fmt.Errorf("listen on %s/udp: %w", addr, err)
	}
	fa, proto := fullAddr(addr)
	c, err := gonet.DialUDP(s.ipstack, &fa, nil, proto)
	if err != nil {
		s.release(addr.Addr())
		return nil, fmt.Errorf("listen on %s/udp: %w", addr, err)
	}
	pc := &packetConn{PacketConn: c}
	pc.bound = bound{s: s, addr: addr.Addr(), inner: c}
	if !s.track(&pc.bound) {
		pc.close()
		return nil, fmt.Errorf("listen on %s/udp: %w", addr, net.ErrClosed)
	}
	return pc, nil
}

type listener struct {
	net.Listener
	bound
}

func (l *listener) Close() error { return l.bound.Close() }

type packetConn struct {
	net.PacketConn
	bound
}

func (c *packetConn) Close() error { return c.bound.Close() }

// bound is what a listener or packet conn holds in the stack: its socket
// and its claim on an address.
type bound struct {
	s     *Stack
	addr  netip.Addr
	inner interface{ Close() error }
	once  sync.Once
	err   error
}

// close is called by the stack's Close; Close by the owner.
func (b *bound) close() {
	b.once.Do(func() {
		b.err = b.inner.Close()
		b.s.release(b.addr)
	})
}

func (b *bound) Close() error {
	b.close()
	b.s.untrack(b)
	return b.err
}

// claim makes addr one of the stack's own, so sockets can bind to it;
// claims are counted, the address leaves with the last.
func (s *Stack) claim(addr netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	if addr.IsUnspecified() {
		return nil // binds every address: nothing to add
	}
	if s.addrs[addr] == 0 {
		fa, proto := fullAddr(netip.AddrPortFrom(addr, 0))
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: fa.Addr.WithPrefix()}
		if err := s.ipstack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %s: %s", addr, err)
		}
	}
	s.addrs[addr]++
	return nil
}

func (s *Stack) release(addr netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr.IsUnspecified() || s.addrs[addr] == 0 {
		return
	}
	s.addrs[addr]--
	if s.addrs[addr] == 0 {
		delete(s.addrs, addr)
		fa, _ := fullAddr(netip.AddrPortFrom(addr, 0))
		s.ipstack.RemoveAddress(nicID, fa.Addr) // fails only once the stack is gone
	}
}

// DialTCP opens a TCP connection from the stack's own address src (one a
// listener holds) to dst, through the device: the manager's way to a
// laptop's end of the WireGuard path. With Config.KeepAlive the
// connection is probed when idle and reset when what it sent goes
// unacknowledged that long. Abort on the returned conn resets it.
func (s *Stack) DialTCP(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*DialedConn, error) {
	laddr, _ := fullAddr(netip.AddrPortFrom(src.Unmap(), 0))
	raddr, proto := fullAddr(netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()))
	var wq waiter.Queue
	ep, terr := s.ipstack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, fmt.Errorf("dial %s: %s", dst, terr)
	}
	s.keepAlive(ep)
	if d := s.cfg.KeepAlive; d > 0 {
		timeout := tcpip.TCPUserTimeoutOption(d)
		ep.SetSockOpt(&timeout)
	}
	entry, ready := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if terr := ep.Bind(laddr); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("dial %s from %s: %s", dst, src, terr)
	}
	terr = ep.Connect(raddr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Abort()
			return nil, fmt.Errorf("dial %s: %w", dst, ctx.Err())
		case <-ready:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, fmt.Errorf("dial %s: %s", dst, terr)
	}
	return &DialedConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep}, nil
}

// DialedConn is a connection DialTCP opened.
type DialedConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

// Abort ends the connection with a reset, dropping what it has not sent:
// for a connection whose peer is gone.
func (c *DialedConn) Abort() {
	c.ep.Abort()
	c.TCPConn.Close()
}
