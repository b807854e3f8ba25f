package netstack

import (
	"context"
	"log/slog"
	"os"
	"sync"

	"tunnel.dev/tunnel/tun"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// NewDevice starts a stack that is itself a device: what is written to
// the returned Device enters the stack, and reading it gives the stack's
// answers. A userspace WireGuard device sits on it directly (the manager's
// end of the WireGuard path), with no TUN and no copy between them but
// the one into WireGuard's own buffers. Close the stack after the device.
func NewDevice(logger *slog.Logger, dialer Dialer, cfg Config) (*Stack, tun.Device, error) {
	s, err := newStack(logger, dialer, cfg, 0)
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
}

// Read gives the stack's outbound packets: it waits for one, then takes
// whatever else is queued, up to len(bufs).
func (d *stackDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	pkt := d.s.link.ReadContext(d.ctx)
	if pkt == nil {
		return 0, os.ErrClosed
	}
	n := 0
	for pkt != nil {
		if size := pkt.Size(); offset+size <= len(bufs[n]) {
			sizes[n] = len(serialize(pkt, bufs[n], offset)) - offset
			n++
		} // else larger than the MTU the stack was given: dropped, TCP resends
		pkt.DecRef()
		if n == len(bufs) {
			break
		}
		pkt = d.s.link.Read()
	}
	return n, nil
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
