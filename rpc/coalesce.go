package rpc

import (
	"encoding/binary"
	"io"
	"sync"
)

// yamux writes each data frame as two writes, its 12-byte header and then
// its body. Over a port-forward every write may become a frame of its own
// through containerd, the kubelet and the API server, so a lone header costs
// as much as a full frame at each hop. CoalesceWrites holds a data frame's
// header back and sends it with the body in one write.
const yamuxHeaderLen = 12

// CoalesceWrites wraps the connection a yamux session runs on.
func CoalesceWrites(rwc io.ReadWriteCloser) io.ReadWriteCloser {
	return &coalescer{ReadWriteCloser: rwc}
}

type coalescer struct {
	io.ReadWriteCloser
	mu   sync.Mutex // guards following
	held []byte     // a data frame's header awaiting its body
	buf  []byte
}

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		// Version 0, type 0 (data), with a body to come: hold it.
		if len(p) == yamuxHeaderLen && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) > 0 {
			c.held = append(c.buf[:0], p...)
			return len(p), nil
		}
		return c.ReadWriteCloser.Write(p)
	}
	c.buf = append(c.held, p...)
	c.held = nil
	n, err := c.ReadWriteCloser.Write(c.buf)
	return max(0, n-yamuxHeaderLen), err
}
