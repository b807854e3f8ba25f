package daemon

import (
	"context"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchAddresses calls changed whenever an address is removed from any
// interface of this machine (rtnetlink's address groups), until ctx ends:
// a Wi-Fi change shows up there first. Added addresses (a DHCP renewal, an
// IPv6 lifetime refreshed by each router advertisement) break nothing.
func watchAddresses(ctx context.Context, changed func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK,
		Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}); err != nil {
		return err
	}
	// A blocked read does not end when the fd is closed: wake every second
	// to look at ctx.
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue
		case err == unix.ENOBUFS: // events lost: something changed
			changed()
			continue
		case err != nil:
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_DELADDR {
				changed()
				break
			}
		}
	}
	return nil
}
