package daemon

import (
	"os"

	"golang.org/x/sys/windows"
)

// lockExclusive takes f's lock without waiting (LockFileEx), released when
// the process dies.
func lockExclusive(f *os.File) error {
	ol := new(windows.Overlapped)
	return windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
}
