//go:build !unix

package sidecar

import "net"

// open cannot peek here; a dead spare is found when it is used.
func open(net.Conn) bool { return true }
