package daemon

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerOf asks the kernel who is at the other end of a unix socket.
func peerOf(c net.Conn) (peer, error) {
	var cred *unix.Ucred
	err := withFD(c, func(fd int) (err error) {
		cred, err = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		return err
	})
	if err != nil {
		return peer{}, err
	}
	var groups []int
	err = withFD(c, func(fd int) (err error) {
		groups, err = peerGroups(fd)
		return err
	})
	if err != nil { // kernels before 4.13
		groups = procGroups(int(cred.Pid))
	}
	return peer{UID: int(cred.Uid), GID: int(cred.Gid), Groups: groups, Known: true}, nil
}

// peerGroups asks the kernel for the peer's supplementary groups as they
// were when it connected (SO_PEERGROUPS): exact, where /proc/PID could
// name another process by the time it is read.
func peerGroups(fd int) ([]int, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == unix.ERANGE && int(n/4) > len(buf) && n <= 65536*4: // the kernel says how many
			buf = make([]uint32, n/4)
			continue
		case errno != 0:
			return nil, errno
		}
		out := make([]int, n/4)
		for i := range out {
			out[i] = int(buf[i])
		}
		return out, nil
	}
}

// procGroups reads a process's supplementary groups; none when it is gone.
func procGroups(pid int) []int {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var out []int
			for _, g := range strings.Fields(rest) {
				if n, err := strconv.Atoi(g); err == nil {
					out = append(out, n)
				}
			}
			return out
		}
	}
	return nil
}
