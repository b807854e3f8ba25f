package daemon

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerOf asks the kernel who is at the other end of a unix socket.
func peerOf(c net.Conn) (peer, error) {
	var x *unix.Xucred
	err := withFD(c, func(fd int) (err error) {
		x, err = unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
		return err
	})
	if err != nil {
		return peer{}, err
	}
	p := peer{UID: int(x.Uid), Known: true}
	for i := 0; i < int(x.Ngroups) && i < len(x.Groups); i++ {
		p.Groups = append(p.Groups, int(x.Groups[i]))
	}
	if len(p.Groups) > 0 {
		p.GID = p.Groups[0]
	}
	return p, nil
}
