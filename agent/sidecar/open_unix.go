//go:build unix

package sidecar

import (
	"errors"
	"net"
	"syscall"
)

// open says whether an idle connection's far end is still there: a peek
// that would block means nothing came, not even an end. A spare's laptop
// sends nothing before it is taken, so bytes are as wrong as an end.
func open(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(rerr, syscall.EAGAIN)
		return true // never wait
	})
	return err == nil && alive
}
