package rpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The direct path: a laptop that holds an intercept port-forwards to each of
// the workload's pods, at the sidecar's SidecarDirectPort (which it binds on
// the pod's loopback only), and keeps a few spare streams open there. The
// sidecar hands a spare to a new connection for the laptop, so intercepted
// traffic crosses the API server and kubelet once, without the manager's hop.
//
// A spare opens with DirectHello: the magic, the manager's intercept id and
// the intercept's direct key, which only its laptop and the sidecars get
// from the manager. The sidecar answers one Status byte. The spare then
// idles until the sidecar takes it: it writes a KindIntercept Header (Flow
// the laptop's id) and the connection's first bytes, and the laptop answers
// with a Status once it has dialed the local process, as on a stream from
// the manager.
const (
	SidecarContainer  = "tunnel-agent" // the sidecar's container in a pod
	SidecarDirectPort = 18098          // its direct port, on the pod's loopback
)

// DirectKeyLen is the length of an intercept's direct key.
const DirectKeyLen = 32

const directMagic = "TNLD"

// DirectHello opens a spare stream.
type DirectHello struct {
	Intercept uint64 // the manager's id
	Key       []byte // DirectKeyLen bytes
}

// WriteDirectHello writes h in one Write.
func WriteDirectHello(w io.Writer, h DirectHello) error {
	if len(h.Key) != DirectKeyLen {
		return fmt.Errorf("%w: direct key of %d bytes, want %d", ErrBadHeader, len(h.Key), DirectKeyLen)
	}
	b := make([]byte, 0, len(directMagic)+8+DirectKeyLen)
	b = append(b, directMagic...)
	b = binary.BigEndian.AppendUint64(b, h.Intercept)
	_, err := w.Write(append(b, h.Key...))
	return err
}

// ReadDirectHello reads a spare's hello; it never reads past it.
func ReadDirectHello(r io.Reader) (DirectHello, error) {
	var b [len(directMagic) + 8 + DirectKeyLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return DirectHello{}, fmt.Errorf("%w: short direct hello", ErrBadHeader)
		}
		return DirectHello{}, err
	}
	if string(b[:len(directMagic)]) != directMagic {
		return DirectHello{}, fmt.Errorf("%w: not a direct hello", ErrBadHeader)
	}
	return DirectHello{
		Intercept: binary.BigEndian.Uint64(b[len(directMagic):]),
		Key:       append([]byte(nil), b[len(directMagic)+8:]...),
	}, nil
}
