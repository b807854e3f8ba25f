package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"tunnel.dev/tunnel/rpc"
)

// fakeDialer is the tunnel without the cluster: a TCP stream is a loopback
// connection to a test server; a UDP stream is one end of a net.Pipe whose
// other end a relay turns into datagrams to a loopback UDP server.
type fakeDialer struct {
	tcp, udp    string                    // loopback servers every stream goes to...
	routes      map[netip.AddrPort]string // ...unless routed elsewhere
	refused     map[netip.AddrPort]bool   // answered with rpc.StatusRefused
	hold        chan struct{}             // if set, dials wait for it to close...
	holdOnly    netip.AddrPort            // ...only those to this destination, if set
	noHalfClose bool                      // hide the TCP stream's CloseWrite
	busy        int                       // the first this many dials answer ErrBusy
	sendBuffer  int                       // if set, TCP streams ask for this send buffer

	mu        sync.Mutex // guards following
	dials     []netip.AddrPort
	inflight  int
	peak      int
	udpClosed int // UDP streams the stack closed

	relays sync.WaitGroup
}

func (d *fakeDialer) DialStream(ctx context.Context, kind rpc.Kind, src, dst netip.AddrPort) (net.Conn, error) {
	d.mu.Lock()
	d.dials = append(d.dials, dst)
	d.inflight++
	d.peak = max(d.peak, d.inflight)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.inflight--
		d.mu.Unlock()
	}()
	if d.hold != nil && (!d.holdOnly.IsValid() || d.holdOnly == dst) {
		select {
		case <-d.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if d.refused[dst] {
		return nil, rpc.StatusRefused
	}
	d.mu.Lock()
	busy := d.busy > 0
	d.busy--
	d.mu.Unlock()
	if busy {
		return nil, ErrBusy
	}
	target, ok := d.routes[dst]
	switch {
	case ok:
	case kind == rpc.KindTCP:
		target = d.tcp
	case kind == rpc.KindUDP:
		target = d.udp
	}
	if target == "" {
		return nil, rpc.StatusUnreachable
	}
	var nd net.Dialer
	switch kind {
	case rpc.KindTCP:
		c, err := nd.DialContext(ctx, "tcp", target)
		if err != nil {
			return nil, err
		}
		if d.noHalfClose {
			return struct{ net.Conn }{c}, nil
		}
		if d.sendBuffer > 0 {
			return sizedStream{c.(*net.TCPConn), d.sendBuffer}, nil
		}
		return c, nil
	case rpc.KindUDP:
		uc, err := nd.DialContext(ctx, "udp", target)
		if err != nil {
			return nil, err
		}
		stream, far := net.Pipe()
		d.relay(far, uc)
		return stream, nil
	}
	return nil, fmt.Errorf("unexpected kind %s", kind)
}

// sizedStream is a TCP stream that asks for a send buffer.
type sizedStream struct {
	*net.TCPConn
	size int
}

func (s sizedStream) SendBuffer() int { return s.size }

// relay plays the manager's side of a UDP stream.
func (d *fakeDialer) relay(stream, udp net.Conn) {
	d.relays.Add(2)
	go func() {
		defer d.relays.Done()
		buf := make([]byte, rpc.MaxDatagram)
		for {
			n, err := rpc.ReadDatagram(stream, buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					d.mu.Lock()
					d.udpClosed++
					d.mu.Unlock()
				}
				udp.Close()
				stream.Close()
				return
			}
			udp.Write(buf[:n])
		}
	}()
	go func() {
		defer d.relays.Done()
		buf := make([]byte, rpc.MaxDatagram)
		for {
			n, err := udp.Read(buf)
			if err != nil {
				stream.Close()
				return
			}
			if err := rpc.WriteDatagram(stream, buf[:n]); err != nil {
				udp.Close()
				return
			}
		}
	}()
}

func (d *fakeDialer) dialed() []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]netip.AddrPort(nil), d.dials...)
}

func (d *fakeDialer) state() (inflight, peak, udpClosed int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inflight, d.peak, d.udpClosed
}
