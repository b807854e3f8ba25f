//go:build unix

package canary

import "syscall"

// alive says whether a process of this machine still runs.
func alive(pid int) bool { return syscall.Kill(pid, 0) != syscall.ESRCH }
