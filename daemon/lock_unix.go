//go:build unix

package daemon

import (
	"os"

	"golang.org/x/sys/unix"
)

// lockExclusive takes f's lock without waiting; the kernel drops it when the
// process dies, so a crashed daemon never blocks the next one.
func lockExclusive(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) }
