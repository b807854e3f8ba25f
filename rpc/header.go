package rpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Every yamux stream between a laptop and the manager opens with a Header
// written by the side that opened it. Its wire form:
//
//	byte 0      Version (1)
//	byte 1      Kind
//	byte 2      address length: 0 (control), 4 or 16
//	bytes 3..   address, then port (uint16, big endian), then flow id (uint64)
//
// The manager answers a TCP or UDP stream with one Status byte once it has
// dialed the destination, so the laptop completes (or resets) the
// application's handshake only after the cluster side is known.
const Version = 1

// Kind says what a stream carries.
type Kind byte

const (
	KindControl Kind = 1 // gRPC control plane
	KindTCP     Kind = 2 // one TCP connection's bytes
	KindUDP     Kind = 3 // one UDP flow's datagrams, each framed by WriteDatagram
	// KindIntercept carries one intercepted TCP connection toward a laptop:
	// opened by a sidecar to the manager and by the manager to the laptop.
	// Dst is the in-cluster client's address and Flow the intercept's
	// number on the receiving side (the manager's id toward the manager,
	// the laptop's id toward the laptop). The receiver answers with a Status
	// once it has dialed the local process; the opener may send the
	// connection's first bytes before that answer arrives.
	KindIntercept Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindControl:
		return "control"
	case KindTCP:
		return "tcp"
	case KindUDP:
		return "udp"
	case KindIntercept:
		return "intercept"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Header opens a stream.
type Header struct {
	Kind Kind
	Dst  netip.AddrPort // zero for KindControl
	Flow uint64         // the laptop's id of the flow, for logs and metrics
}

// MaxHeaderLen bounds what ReadHeader reads.
const MaxHeaderLen = 3 + 16 + 2 + 8

// ErrBadHeader is wrapped by every ReadHeader error about the bytes themselves.
var ErrBadHeader = errors.New("bad stream header")

// AppendHeader appends h's wire form to b.
func AppendHeader(b []byte, h Header) []byte {
	b = append(b, Version, byte(h.Kind))
	if h.Kind == KindControl {
		return append(b, 0)
	}
	addr := h.Dst.Addr().Unmap()
	b = append(b, byte(addr.BitLen()/8))
	b = append(b, addr.AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, h.Dst.Port())
	return binary.BigEndian.AppendUint64(b, h.Flow)
}

// WriteHeader writes h in one Write.
func WriteHeader(w io.Writer, h Header) error {
	if h.Kind != KindControl && !h.Dst.IsValid() {
		return fmt.Errorf("%w: %s stream without a destination", ErrBadHeader, h.Kind)
	}
	_, err := w.Write(AppendHeader(make([]byte, 0, MaxHeaderLen), h))
	return err
}

// ReadHeader reads and checks a header; it never reads past it.
func ReadHeader(r io.Reader) (Header, error) {
	var fixed [3]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("read stream header: %w", err)
	}
	if fixed[0] != Version {
		return Header{}, fmt.Errorf("%w: version %d, want %d", ErrBadHeader, fixed[0], Version)
	}
	h := Header{Kind: Kind(fixed[1])}
	alen := int(fixed[2])
	switch h.Kind {
	case KindControl:
		if alen != 0 {
			return Header{}, fmt.Errorf("%w: control stream with an address", ErrBadHeader)
		}
		return h, nil
	case KindTCP, KindUDP, KindIntercept:
		if alen != 4 && alen != 16 {
			return Header{}, fmt.Errorf("%w: address length %d", ErrBadHeader, alen)
		}
	default:
		return Header{}, fmt.Errorf("%w: unknown kind %d", ErrBadHeader, fixed[1])
	}
	var rest [16 + 2 + 8]byte
	buf := rest[:alen+10]
	if _, err := io.ReadFull(r, buf); err != nil {
		return Header{}, fmt.Errorf("read stream header: %w", err)
	}
	addr, _ := netip.AddrFromSlice(buf[:alen])
	addr = addr.Unmap() // a v4-mapped address means the IPv4 one
	port := binary.BigEndian.Uint16(buf[alen:])
	h.Dst = netip.AddrPortFrom(addr, port)
	h.Flow = binary.BigEndian.Uint64(buf[alen+2:])
	return h, nil
}

// Status is the manager's one-byte answer to a TCP or UDP stream's header.
type Status byte

const (
	StatusOK          Status = 0
	StatusRefused     Status = 1 // the destination refused the connection
	StatusUnreachable Status = 2 // no route, or the dial timed out
	StatusForbidden   Status = 3 // the manager will not dial that destination
)

func (s Status) Error() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "connection refused in the cluster"
	case StatusUnreachable:
		return "destination unreachable from the cluster"
	case StatusForbidden:
		return "the manager refuses that destination"
	}
	return fmt.Sprintf("unknown stream status %d", byte(s))
}

// ReadStatus reads the manager's answer; a non-OK status is returned as the
// error itself, so callers can errors.As it.
func ReadStatus(r io.Reader) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read stream status: %w", err)
	}
	if s := Status(b[0]); s != StatusOK {
		return s
	}
	return nil
}

// MaxDatagram is the largest UDP payload a flow carries.
const MaxDatagram = 65535

// WriteDatagram frames one datagram on a stream: a two-byte big-endian
// length, then the bytes, in one Write so concurrent writers never interleave.
func WriteDatagram(w io.Writer, p []byte) error {
	if len(p) > MaxDatagram {
		return fmt.Errorf("datagram of %d bytes exceeds %d", len(p), MaxDatagram)
	}
	buf := make([]byte, 2+len(p))
	binary.BigEndian.PutUint16(buf, uint16(len(p)))
	copy(buf[2:], p)
	_, err := w.Write(buf)
	return err
}

// ReadDatagram reads one framed datagram into buf (which must hold
// MaxDatagram bytes) and returns its length.
func ReadDatagram(r io.Reader, buf []byte) (int, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > len(buf) {
		return 0, fmt.Errorf("datagram of %d bytes does not fit a %d-byte buffer", n, len(buf))
	}
	_, err := io.ReadFull(r, buf[:n])
	return n, err
}
