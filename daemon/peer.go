package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"

	"golang.org/x/time/rate"
)

// peer is the local user at the other end of a connection to the daemon's
// socket, as the kernel tells it.
type peer struct {
	UID    int
	GID    int
	Groups []int // supplementary groups, where the OS tells them
	Known  bool  // false where the OS cannot tell (then the socket's mode decides)
}

// peerAddr carries a connection's peer to the gRPC handlers, which see it
// as the connection's remote address.
type peerAddr struct{ p peer }

func (a peerAddr) Network() string { return "unix" }
func (a peerAddr) String() string  { return "uid " + strconv.Itoa(a.p.UID) }

type peerConn struct {
	net.Conn
	p peer
}

func (c peerConn) RemoteAddr() net.Addr { return peerAddr{c.p} }

// peerListener admits only root, the daemon's user and, with --group, that
// group's members: checked on every connection by the kernel's word, not
// only by the socket file's mode, which a mistake (or a chmod) can open.
type peerListener struct {
	net.Listener
	caller Caller
	group  int // -1: none
	log    *slog.Logger
	warn   rate.Sometimes
}

// withFD runs f on a unix socket's descriptor.
func withFD(c net.Conn, f func(fd int) error) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("not a unix socket: %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("read the peer's credentials: %w", ferr)
	}
	return nil
}

func (l *peerListener) allows(p peer) bool {
	if !p.Known {
		return true // the socket's mode and its 0700 folder decide
	}
	return p.UID == 0 || p.UID == l.caller.UID ||
		(l.group >= 0 && (p.GID == l.group || slices.Contains(p.Groups, l.group)))
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p, err := peerOf(c)
		if err != nil || !l.allows(p) {
			l.warn.Do(func() { l.log.Warn("refusing a connection to the daemon's socket", "peer_uid", p.UID, "err", err) })
			c.Close()
			continue
		}
		return peerConn{c, p}, nil
	}
}
