//go:build unix

package daemon

import (
	"os"

	"golang.org/x/sys/unix"
)

// noFollow: the log is never opened through a symlink someone planted.
const noFollow = unix.O_NOFOLLOW

func redirectOutput(f *os.File) {
	_ = unix.Dup2(int(f.Fd()), 1)
	_ = unix.Dup2(int(f.Fd()), 2)
}
