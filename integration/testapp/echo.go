package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// maxDatagram is the largest UDP payload, so no datagram is ever truncated.
const maxDatagram = 64 << 10

// acceptBackoff is the pause after a transient accept error.
const acceptBackoff = 10 * time.Millisecond

// serveTCPEcho echoes each connection's bytes back until the client closes
// it, and returns once ctx is done and every connection has ended.
func serveTCPEcho(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, net.ErrClosed) {
				// EMFILE and aborted handshakes pass; back off like
				// net/http does rather than take the pod down under load.
				time.Sleep(acceptBackoff)
				continue
			}
			return fmt.Errorf("accept tcp echo on %s: %w", ln.Addr(), err)
		}
		wg.Go(func() { echoConn(ctx, conn) })
	}
}

func echoConn(ctx context.Context, conn net.Conn) {
	// Closing on shutdown unblocks the copy below.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	defer conn.Close()

	_, _ = io.Copy(conn, conn)
	// Half-close so a client that shut down its write side still reads
	// everything and then sees EOF.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// serveUDPEcho sends each datagram back to its sender until ctx is done.
func serveUDPEcho(ctx context.Context, pc net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { _ = pc.Close() })
	defer stop()

	buf := make([]byte, maxDatagram)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			_ = pc.Close()
			return fmt.Errorf("read udp echo on %s: %w", pc.LocalAddr(), err)
		}
		// A peer that cannot be reached must not stop the echo for others;
		// if the socket itself broke, the next read reports it.
		_, _ = pc.WriteTo(buf[:n], addr)
	}
}
