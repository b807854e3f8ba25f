package netstack

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// chanDevice is a tun.Device made of channels: packets sent into in come
// out of Read, packets given to Write come out of out (to the client
// stack).
type chanDevice struct {
	mtu   int
	batch int

	in     chan []byte
	out    chan []byte
	events chan tun.Event
	closed chan struct{}
	once   sync.Once

	writeCalls    atomic.Int64
	writePackets  atomic.Int64
	maxWriteBatch atomic.Int64
	badOffset     atomic.Bool
}

var _ tun.Device = (*chanDevice)(nil)

func newChanDevice(mtu, batch int) *chanDevice {
	return &chanDevice{
		mtu:    mtu,
		batch:  batch,
		in:     make(chan []byte, 1024),
		out:    make(chan []byte, 1024),
		events: make(chan tun.Event, 1),
		closed: make(chan struct{}),
	}
}

// send queues one packet for the stack to read; false once closed.
func (d *chanDevice) send(p []byte) bool {
	select {
	case d.in <- p:
		return true
	case <-d.closed:
		return false
	}
}

// Read returns the next packet and whatever else is queued, up to
// len(bufs), as a real device does with a batch.
func (d *chanDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if offset < 10 {
		d.badOffset.Store(true) // wireguard's Linux tun needs 10 for its virtio header
	}
	var p []byte
	select {
	case p = <-d.in:
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		if len(p) > len(bufs[n])-offset {
			return n, errors.New("packet larger than the read buffer")
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case p = <-d.in:
		default:
			return n, nil
		}
	}
}

func (d *chanDevice) Write(bufs [][]byte, offset int) (int, error) {
	if offset < 10 {
		d.badOffset.Store(true)
	}
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	d.writeCalls.Add(1)
	d.writePackets.Add(int64(len(bufs)))
	for {
		m := d.maxWriteBatch.Load()
		if int64(len(bufs)) <= m || d.maxWriteBatch.CompareAndSwap(m, int64(len(bufs))) {
			break
		}
	}
	for i, b := range bufs {
		select {
		case d.out <- bytes.Clone(b[offset:]):
		case <-d.closed:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

func (d *chanDevice) File() *os.File           { return nil }
func (d *chanDevice) MTU() (int, error)        { return d.mtu, nil }
func (d *chanDevice) Name() (string, error)    { return "chan0", nil }
func (d *chanDevice) Events() <-chan tun.Event { return d.events }
func (d *chanDevice) BatchSize() int           { return d.batch }

func (d *chanDevice) Close() error {
	d.once.Do(func() {
		close(d.closed)
		close(d.events)
	})
	return nil
}
