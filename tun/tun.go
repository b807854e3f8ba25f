// Package tun owns the laptop's TUN device and the routes that send the
// cluster's subnets into it. Packets read from the device go to
// tun/netstack, which turns them into streams; the device type is
// wireguard-go's, the same contract on Linux, macOS and Windows.
package tun

import (
	"fmt"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Device is a TUN device: wireguard-go's interface, whole.
type Device = wgtun.Device

// DefaultMTU is large: packets in the device never reach a wire (the
// userspace stack terminates them and only payload crosses the tunnel), so
// a big MTU only means fewer segments for the stack and the kernel to
// handle, as on loopback.
const DefaultMTU = 65520

// Create makes a TUN device. On Linux it vanishes with the process that
// holds it, routes included, so a crashed daemon leaves no routes behind.
func Create(name string, mtu int) (Device, error) {
	dev, err := wgtun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	return dev, nil
}
