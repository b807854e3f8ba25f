package netstack

import (
	"context"
	"errors"
	"net"
	"os"

	"golang.zx2c4.com/wireguard/tun"
)

const (
	// devOffset is the room left before each packet in the buffers handed to
	// the device: wireguard's Linux tun puts its virtio header there.
	devOffset = 16
	// maxBatch caps packets per device Read or Write (Linux tun offers 128).
	maxBatch = 128
	// maxPacket is the largest IP packet; with offloads a write buffer grows
	// to it as the device coalesces segments into it.
	maxPacket = 65535
)

func batchSize(dev tun.Device) int {
	return min(max(dev.BatchSize(), 1), maxBatch)
}

// readLoop feeds the stack what the device reads, a batch at a time, and
// flushes GRO after each batch. It ends when Read fails for good, or
// returns after Close; Close cannot interrupt a blocked Read.
func (s *Stack) readLoop() {
	n := batchSize(s.dev)
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	// The first buffer takes a whole packet the device did not segment;
	// the others take the segments it split a large one into.
	bufs[0] = make([]byte, devOffset+maxPacket)
	for i := 1; i < n; i++ {
		bufs[i] = make([]byte, devOffset+s.cfg.MTU)
	}
	for {
		count, err := s.dev.Read(bufs, sizes, devOffset)
		if s.stopRead.Load() {
			return
		}
		for i := range count {
			s.link.inject(bufs[i][devOffset : devOffset+sizes[i]])
		}
		s.link.flush()
		switch {
		case err == nil:
		case errors.Is(err, tun.ErrTooManySegments):
			// The device dropped a packet it could not split; TCP resends.
			s.logLimited("read", "dropped a packet too large for the read batch", "err", err)
		case errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed):
			s.log.Debug("device closed")
			return
		default:
			s.log.Error("read from device: stopped forwarding packets", "err", err)
			return
		}
	}
}

// writeLoop sends the stack's packets to the device in batches: what is
// queued when the first arrives goes in the same Write, which lets the
// device coalesce segments of a connection. Once ctx ends it writes what is
// still queued and returns.
func (s *Stack) writeLoop(ctx context.Context) {
	defer close(s.writerDone)
	n := batchSize(s.dev)
	mem := make([][]byte, n)
	for i := range mem {
		mem[i] = make([]byte, devOffset+maxPacket)
	}
	bufs := make([][]byte, 0, n)
	for {
		pkt := s.link.ReadContext(ctx)
		if pkt == nil {
			pkt = s.link.Read() // stopping: flush the queue
		}
		if pkt == nil {
			return
		}
		bufs = bufs[:0]
		for pkt != nil {
			bufs = append(bufs, serialize(pkt, mem[len(bufs)], devOffset))
			pkt.DecRef()
			if len(bufs) == n {
				break
			}
			pkt = s.link.Read()
		}
		if _, err := s.dev.Write(bufs, devOffset); err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				s.link.Drain()
				if ctx.Err() != nil {
					return
				}
			}
			// A lost packet is TCP's to resend; say so now and then.
			s.logLimited("write", "write to device", "err", err, "packets", len(bufs))
		}
	}
}
