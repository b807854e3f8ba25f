package netstack

import (
	"context"
	"log/slog"
	"os"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"tunnel.dev/tunnel/tun"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// NewDevice starts a stack that is itself a device: what is written to
// the returned Device enters the stack, and reading it gives the stack's
// answers. A userspace WireGuard device sits on it directly (the manager's
// end of the WireGuard path), with no TUN and no copy between them but
// the one into WireGuard's own buffers. Close the stack after the device.
func NewDevice(logger *slog.Logger, dialer Dialer, cfg Config) (*Stack, tun.Device, error) {
	s, err := newStack(logger, dialer, cfg, 0, true)
	if err != nil {
		return nil, nil, err
	}
	d := &stackDevice{s: s, events: make(chan wgtun.Event, 1)}
	d.ctx, d.cancel = context.WithCancel(s.ctx)
	d.events <- wgtun.EventUp
	s.log.Info("started as a device", "mtu", s.cfg.MTU)
	return s, d, nil
}

type stackDevice struct {
	s      *Stack
	ctx    context.Context // ends when the device or the stack closes
	cancel context.CancelFunc
	events chan wgtun.Event
	once   sync.Once
	mu     sync.Mutex // inject and flush are one writer's
	cut    cutter     // Read's: a large segment partly out
}

// cutter holds one large TCP segment while Read hands it out in pieces.
type cutter struct {
	buf                    []byte // the segment, whole
	l4, payload, mss, next int    // where its headers end; how far it is out
}

// start takes pkt's bytes; false when it is not a TCP packet it can cut.
func (c *cutter) start(pkt *stack.PacketBuffer, mss int) bool {
	if cap(c.buf) < pkt.Size() {
		c.buf = make([]byte, pkt.Size())
	}
	c.buf = serialize(pkt, c.buf[:cap(c.buf)], 0)
	l4, payload, ok := tcpHeaders(c.buf)
	if !ok || mss <= 0 {
		c.buf = c.buf[:0]
		return false
	}
	c.l4, c.payload, c.mss, c.next = l4, payload, mss, 0
	return true
}

// resume writes what is left of the segment to bufs and returns how many
// packets it wrote.
func (c *cutter) resume(bufs [][]byte, sizes []int, offset int) int {
	if len(c.buf) == 0 {
		return 0
	}
	n, next := segmentTCP(c.buf, c.l4, c.payload, c.mss, c.next, bufs, sizes, offset)
	c.next = next
	if next >= len(c.buf)-c.payload || n == 0 {
		c.buf = c.buf[:0] // all out, or it never will be: TCP resends
	}
	return n
}

// Read gives the stack's outbound packets: it waits for one, then takes
// whatever else is queued, up to len(bufs). TCP's large segments come out
// cut to the MSS; what does not fit in bufs waits for the next Read.
func (d *stackDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := d.cut.resume(bufs, sizes, offset)
	if n == len(bufs) {
		return n, nil
	}
	var pkt *stack.PacketBuffer
	if n == 0 {
		if pkt = d.s.link.ReadContext(d.ctx); pkt == nil {
			return 0, os.ErrClosed
		}
	} else {
		pkt = d.s.link.Read()
	}
	for pkt != nil {
		n = d.put(pkt, bufs, sizes, offset, n)
		pkt.DecRef()
		if n == len(bufs) {
			break
		}
		pkt = d.s.link.Read()
	}
	return n, nil
}

// put writes pkt to bufs from index n on and returns the next free index.
func (d *stackDevice) put(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset, n int) int {
	size := pkt.Size()
	gso := pkt.GSOOptions.NeedsCsum && (pkt.GSOOptions.Type == stack.GSOTCPv4 || pkt.GSOOptions.Type == stack.GSOTCPv6)
	if size <= d.s.cfg.MTU || !gso {
		if offset+size > len(bufs[n]) {
			return n // larger than the buffers: dropped, TCP resends
		}
		b := serialize(pkt, bufs[n], offset)[offset:]
		if gso {
			l4, _, ok := tcpHeaders(b)
			if !ok {
				return n
			}
			finishChecksum(b, l4)
		}
		sizes[n] = len(b)
		return n + 1
	}
	if !d.cut.start(pkt, int(pkt.GSOOptions.MSS)) {
		return n
	}
	return n + d.cut.resume(bufs[n:], sizes[n:], offset)
}

// Write hands packets to the stack, GRO merging a connection's segments.
func (d *stackDevice) Write(bufs [][]byte, offset int) (int, error) {
	if d.ctx.Err() != nil {
		return 0, os.ErrClosed
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		d.s.link.inject(b[offset:])
	}
	d.s.link.flush()
	return len(bufs), nil
}

func (d *stackDevice) MTU() (int, error)          { return d.s.cfg.MTU, nil }
func (d *stackDevice) Name() (string, error)      { return "netstack", nil }
func (d *stackDevice) File() *os.File             { return nil }
func (d *stackDevice) Events() <-chan wgtun.Event { return d.events }
func (d *stackDevice) BatchSize() int             { return maxBatch }

// Close ends Read and Write; the stack goes on until its own Close.
func (d *stackDevice) Close() error {
	d.once.Do(func() {
		d.cancel()
		close(d.events)
	})
	return nil
}
