// Package wgpath is the WireGuard path between a laptop and the manager:
// the data path that does not cross the API server. On the laptop, Split
// hands the TUN device's packets of new connections to a userspace
// WireGuard device (Client); on the manager, Server terminates them in a
// userspace stack and dials the cluster with the same per-session decision
// as the port-forward path. Keys live in memory for one session; the
// control stream, authenticated by the session, carries the public ones.
//
// Not to be confused with the intercepts' "direct" port-forwards to pods
// (daemon/direct.go): this is the path of `connect`'s own traffic.
package wgpath

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/device"
)

// Key is a Curve25519 key, private or public.
type Key [32]byte

// NewPrivateKey makes a fresh private key.
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("make a WireGuard key: %w", err)
	}
	k[0] &= 248 // clamp, as WireGuard's keys are
	k[31] = k[31]&127 | 64
	return k, nil
}

// Public is the public key of a private one.
func (k Key) Public() Key {
	var p Key
	curve25519.ScalarBaseMult((*[32]byte)(&p), (*[32]byte)(&k))
	return p
}

// hex is the form WireGuard's configuration protocol takes.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// ParseKey reads a public key sent over the control stream.
func ParseKey(b []byte) (Key, error) {
	var k Key
	if len(b) != len(k) {
		return k, fmt.Errorf("a WireGuard key is %d bytes, not %d", len(k), len(b))
	}
	copy(k[:], b)
	if k == (Key{}) {
		return k, fmt.Errorf("a WireGuard key of zeros")
	}
	return k, nil
}

// wgLogger routes wireguard-go's logs to slog: errors at debug level
// (a peer that went away is routine), the rest dropped.
func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) },
	}
}

// MTU of the packets inside the tunnel: a 1500-byte path less WireGuard's
// 80 bytes over IPv6 (60 over IPv4), as wg-quick chooses.
const MTU = 1420
