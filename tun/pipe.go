package tun

import (
	"errors"
	"os"
	"sync"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Pipe makes two Devices joined back to back, a packet written to one is
// read from the other: the wire between a userspace stack and a userspace
// WireGuard device, where neither needs a kernel TUN (the manager's pod has
// no capabilities). Each direction holds up to queue packets of at most mtu
// bytes; a writer waits for room rather than drop, so TCP on either side
// sees back-pressure, not loss. Closing either end closes both.
func Pipe(mtu, queue int) (Device, Device) {
	w := &wire{done: make(chan struct{})}
	w.bufs.New = func() any { b := make([]byte, mtu); return &b }
	ab, ba := make(chan *[]byte, queue), make(chan *[]byte, queue)
	a := &pipeEnd{w: w, mtu: mtu, in: ba, out: ab, events: make(chan wgtun.Event, 1)}
	b := &pipeEnd{w: w, mtu: mtu, in: ab, out: ba, events: make(chan wgtun.Event, 1)}
	a.events <- wgtun.EventUp
	b.events <- wgtun.EventUp
	w.ends = [2]*pipeEnd{a, b}
	return a, b
}

// pipeBatch is how many packets a Read or Write of a pipe end takes at once.
const pipeBatch = 128

type wire struct {
	bufs sync.Pool // of *[]byte, mtu long
	done chan struct{}
	once sync.Once
	ends [2]*pipeEnd
}

type pipeEnd struct {
	w       *wire
	mtu     int
	in, out chan *[]byte
	events  chan wgtun.Event
}

var errTooBig = errors.New("packet larger than the pipe's MTU")

func (p *pipeEnd) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var pkt *[]byte
	select {
	case pkt = <-p.in:
	case <-p.w.done:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], *pkt)
		p.w.bufs.Put(pkt)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case pkt = <-p.in:
		default:
			return n, nil
		}
	}
}

func (p *pipeEnd) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		b = b[offset:]
		if len(b) > p.mtu {
			return i, errTooBig
		}
		pkt := p.w.bufs.Get().(*[]byte)
		*pkt = (*pkt)[:cap(*pkt)]
		*pkt = (*pkt)[:copy(*pkt, b)]
		select {
		case p.out <- pkt:
		case <-p.w.done:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (p *pipeEnd) MTU() (int, error)          { return p.mtu, nil }
func (p *pipeEnd) Name() (string, error)      { return "pipe", nil }
func (p *pipeEnd) File() *os.File             { return nil }
func (p *pipeEnd) Events() <-chan wgtun.Event { return p.events }
func (p *pipeEnd) BatchSize() int             { return pipeBatch }
func (p *pipeEnd) Close() error {
	p.w.once.Do(func() {
		close(p.w.done)
		for _, e := range p.w.ends {
			close(e.events)
		}
	})
	return nil
}
