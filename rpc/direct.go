package rpc

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
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
// A spare opens with a handshake in which each side proves it knows the
// intercept's direct key (which only its laptop and the workload's sidecars
// get from the manager) without ever sending it, bound to the pod the
// laptop meant to reach, so a look-alike pod learns nothing and cannot relay
// the handshake to the real sidecar:
//
//	laptop:  DirectHello{magic, intercept id, laptop nonce}
//	sidecar: Status; when OK, its nonce and DirectProof("sidecar", its pod)
//	laptop:  DirectProof("laptop", the pod it port-forwarded to)
//	sidecar: Status
//
// The spare then idles until the sidecar takes it: it writes a KindIntercept
// Header (Flow the laptop's id) and the connection's first bytes, and the
// laptop answers with a Status once it has dialed the local process, as on
// a stream from the manager.
const (
	SidecarContainer = "tunnel-agent" // the sidecar's container in a pod
	// SidecarTokenVolume holds the sidecar's token for the manager; no
	// other container of the pod may mount it.
	SidecarTokenVolume = "tunnel-agent-token"
	SidecarDirectPort  = 18098 // its direct port, on the pod's loopback
)

// DirectKeyLen is the length of an intercept's direct key.
const DirectKeyLen = 32

// directMagic names this handshake; the first, which sent the key itself,
// had "TNLD", so an older sidecar closes the stream (and the laptop goes
// through the manager).
const directMagic = "TND2"

// Sizes of the handshake's nonces and proofs.
const (
	DirectNonceLen = 16
	DirectProofLen = sha256.Size
)

// DirectHello opens a spare stream.
type DirectHello struct {
	Intercept uint64 // the manager's id
	Nonce     []byte // the laptop's, DirectNonceLen bytes
}

// WriteDirectHello writes h in one Write.
func WriteDirectHello(w io.Writer, h DirectHello) error {
	if len(h.Nonce) != DirectNonceLen {
		return fmt.Errorf("%w: direct nonce of %d bytes, want %d", ErrBadHeader, len(h.Nonce), DirectNonceLen)
	}
	b := make([]byte, 0, len(directMagic)+8+DirectNonceLen)
	b = append(b, directMagic...)
	b = binary.BigEndian.AppendUint64(b, h.Intercept)
	_, err := w.Write(append(b, h.Nonce...))
	return err
}

// ReadDirectHello reads a spare's hello; it never reads past it.
func ReadDirectHello(r io.Reader) (DirectHello, error) {
	var b [len(directMagic) + 8 + DirectNonceLen]byte
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
		Nonce:     append([]byte(nil), b[len(directMagic)+8:]...),
	}, nil
}

// Roles in a DirectProof.
const (
	DirectSidecar = "sidecar"
	DirectLaptop  = "laptop"
)

// DirectProof is what role shows it holds key: an HMAC over the role, the
// pod, both nonces and the intercept, so a proof serves one handshake with
// one pod, in one direction.
func DirectProof(key []byte, role, pod string, intercept uint64, laptopNonce, sidecarNonce []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("tunnel.dev/direct\x00" + role + "\x00" + pod + "\x00"))
	m.Write(binary.BigEndian.AppendUint64(nil, intercept))
	m.Write(laptopNonce)
	m.Write(sidecarNonce)
	return m.Sum(nil)
}

// CheckDirectProof says whether proof is DirectProof(...) for these inputs,
// in constant time.
func CheckDirectProof(proof, key []byte, role, pod string, intercept uint64, laptopNonce, sidecarNonce []byte) bool {
	return len(key) > 0 && hmac.Equal(proof, DirectProof(key, role, pod, intercept, laptopNonce, sidecarNonce))
}

// ErrDirectImpostor means the pod at the other end of a spare does not
// know the intercept's key: it is no sidecar of the workload.
var ErrDirectImpostor = errors.New("the pod could not prove it is the workload's sidecar")

// OfferDirect is the laptop's side of a spare's handshake with pod, up to
// the sidecar's last Status, which it returns as the error when not OK.
func OfferDirect(c io.ReadWriter, key []byte, pod string, intercept uint64) error {
	nl := make([]byte, DirectNonceLen)
	_, _ = rand.Read(nl)
	if err := WriteDirectHello(c, DirectHello{Intercept: intercept, Nonce: nl}); err != nil {
		return err
	}
	if err := ReadStatus(c); err != nil {
		return err
	}
	var b [DirectNonceLen + DirectProofLen]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the sidecar's proof: %w", err)
	}
	ns, proof := b[:DirectNonceLen], b[DirectNonceLen:]
	if !CheckDirectProof(proof, key, DirectSidecar, pod, intercept, nl, ns) {
		return ErrDirectImpostor
	}
	if _, err := c.Write(DirectProof(key, DirectLaptop, pod, intercept, nl, ns)); err != nil {
		return err
	}
	return ReadStatus(c)
}

// AnswerDirect is the sidecar's side of a spare's handshake, after its
// hello h and once the sidecar took it for an intercept it holds with key:
// it proves the key and checks the laptop's proof. It sends no last Status:
// the caller answers StatusOK, or StatusForbidden when this returns
// ErrDirectImpostor.
func AnswerDirect(c io.ReadWriter, key []byte, pod string, h DirectHello) error {
	ns := make([]byte, DirectNonceLen)
	_, _ = rand.Read(ns)
	msg := append([]byte{byte(StatusOK)}, ns...)
	if _, err := c.Write(append(msg, DirectProof(key, DirectSidecar, pod, h.Intercept, h.Nonce, ns)...)); err != nil {
		return err
	}
	proof := make([]byte, DirectProofLen)
	if _, err := io.ReadFull(c, proof); err != nil {
		return fmt.Errorf("read the laptop's proof: %w", err)
	}
	if !CheckDirectProof(proof, key, DirectLaptop, pod, h.Intercept, h.Nonce, ns) {
		return ErrDirectImpostor
	}
	return nil
}
