package wgpath

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"tunnel.dev/tunnel/rpc"
	"tunnel.dev/tunnel/tun"
	"tunnel.dev/tunnel/tun/netstack"
)

// InterceptPort is the TCP port of a session's tunnel address where the
// manager opens the connections it carries to the laptop over WireGuard
// (intercepted requests, each led by an rpc.Header), instead of streams
// over the port-forward.
const InterceptPort = 1

// inbound is the laptop's end of the connections the manager opens: a
// small userspace stack of its own, whose device is fed the packets from
// the manager's address to the session's intercept port, and whose
// answers go back into WireGuard. The laptop's kernel never sees them, and
// nothing but the manager, inside the tunnel, reaches the stack.
type inbound struct {
	log   *slog.Logger
	stack *netstack.Stack
	dev   tun.Device
	done  chan struct{}

	mu   sync.Mutex
	open map[net.Conn]struct{} // the connections being served
}

// newInbound starts the stack, its packets going out through w. Its
// connections' buffers are those the manager's side of the path has.
func newInbound(log *slog.Logger, w *wgEnd) (*inbound, error) {
	st, dev, err := netstack.NewDevice(log, refuse{}, netstack.Config{MTU: MTU,
		MaxReceiveBuffer: maxReceiveBuffer, MaxSendBuffer: maxSendBuffer, KeepAlive: keepAlive})
	if err != nil {
		return nil, err
	}
	in := &inbound{log: log, stack: st, dev: dev, done: make(chan struct{}), open: map[net.Conn]struct{}{}}
	go in.toWireGuard(w)
	return in, nil
}

// toWireGuard sends the stack's packets into the tunnel.
func (in *inbound) toWireGuard(w *wgEnd) {
	defer close(in.done)
	n := max(in.dev.BatchSize(), 1)
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, MTU)
	}
	for {
		count, err := in.dev.Read(bufs, sizes, 0)
		for i := range count {
			w.send(bufs[i][:sizes[i]])
		}
		if err != nil {
			return
		}
	}
}

// deliver hands the stack packets that came over the tunnel.
func (in *inbound) deliver(bufs [][]byte, offset int) {
	if _, err := in.dev.Write(bufs, offset); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) {
		in.log.Debug("deliver to the inbound stack", "err", err)
	}
}

// listen opens addr's intercept port.
func (in *inbound) listen(addr netip.Addr) (net.Listener, error) {
	return in.stack.Listen(netip.AddrPortFrom(addr, InterceptPort))
}

// serve accepts the manager's connections on ln until ctx ends, each
// handed to handle; those still open then are closed, as the session's
// address goes with it.
func (in *inbound) serve(ctx context.Context, ln net.Listener, handle func(net.Conn)) {
	ended := false
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		in.mu.Lock()
		ended = true
		in.mu.Unlock()
		in.drop()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		in.mu.Lock()
		if ended {
			in.mu.Unlock()
			c.Close()
			return
		}
		in.open[c] = struct{}{}
		in.mu.Unlock()
		go func() {
			handle(c)
			in.mu.Lock()
			delete(in.open, c)
			in.mu.Unlock()
		}()
	}
}

// drop closes the connections being served: the path that carried them is
// down (the manager resets its ends as it stops hearing the laptop), and
// the local process is better told now than after TCP's keepalives.
func (in *inbound) drop() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for c := range in.open {
		c.Close()
		delete(in.open, c)
	}
}

func (in *inbound) close() {
	in.dev.Close()
	in.stack.Close()
	<-in.done
}

// refuse is the inbound stack's dialer: it forwards nothing.
type refuse struct{}

func (refuse) DialStream(context.Context, rpc.Kind, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
	return nil, rpc.StatusRefused
}

// isInbound says whether p is a packet of a connection the manager opened
// to the laptop.
func isInbound(p *packet) bool {
	return p.proto == protoTCP && p.dport == InterceptPort && p.src == Server4
}
