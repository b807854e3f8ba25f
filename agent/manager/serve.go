package manager

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"

	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// Serve accepts sessions on ln until ctx ends or ln fails, then closes ln
// and every session and waits for all their goroutines. It returns nil when
// ctx ended it.
func (m *Manager) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(m.unaryGate), grpc.ChainStreamInterceptor(m.streamGate),
		grpc.MaxConcurrentStreams(256)) // calls at once per control stream; DNS lookups come in bursts
	managerpb.RegisterManagerServer(gs, &control{m: m})
	controlLn := newStreamListener(ln.Addr())

	var wg sync.WaitGroup
	wg.Go(func() {
		// Serve returns when gs.Stop closes controlLn; its error says nothing more.
		_ = gs.Serve(controlLn)
	})
	stopClose := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopClose()

	m.logger.Info("serving sessions", "addr", ln.Addr().String())
	var err error
	for {
		conn, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accept sessions on %s: %w", ln.Addr(), aerr)
			}
			break
		}
		wg.Go(func() { m.serveSession(ctx, conn, controlLn) })
	}
	ln.Close()
	cancel() // ends every session
	gs.Stop()
	wg.Wait()
	m.logger.Info("stopped serving sessions", "addr", ln.Addr().String())
	return err
}
