package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	mdns "github.com/miekg/dns"
)

// shutdownTimeout bounds how long Serve waits for answers in flight when it stops.
const shutdownTimeout = 5 * time.Second

// Serve runs miekg/dns servers on the given conns (either may be nil) until
// ctx ends or Close. The conns come from the daemon's userspace stack, so the
// servers never open sockets of their own; Serve closes the conns when it
// returns. It returns nil when stopped, or why a server failed.
func (r *Resolver) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	r.serving.Add(1)
	r.mu.Unlock()
	defer r.serving.Done()

	// Queries in flight end with Serve's ctx as well as with Close.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.ctx, cancel)
	defer stop()
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) { r.serve(ctx, w, q) })

	var servers []*server
	if pc != nil {
		servers = append(servers, startServer(&mdns.Server{PacketConn: pc, Handler: h, UDPSize: mdns.MaxMsgSize}))
	}
	if ln != nil {
		servers = append(servers, startServer(&mdns.Server{Listener: ln, Handler: h}))
	}
	if len(servers) == 0 {
		return errors.New("serve dns: no conns to serve on")
	}

	var errs []error
	failed := make(chan error, len(servers))
	for _, s := range servers {
		select {
		case <-s.started:
			go func() {
				failed <- <-s.done // nil too: only Shutdown may stop a server
				close(s.stopped)
			}()
		case err := <-s.done:
			errs = append(errs, fmt.Errorf("start dns server: %w", err))
			close(s.stopped)
		}
	}
	if len(errs) == 0 {
		r.logger.Info("serving dns", "udp", addrOf(pc), "tcp", listenAddr(ln))
		select {
		case <-ctx.Done():
		case err := <-failed:
			if err == nil {
				err = errors.New("server stopped on its own")
			}
			errs = append(errs, fmt.Errorf("serve dns: %w", err))
		}
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer scancel()
	for _, s := range servers {
		select {
		case <-s.stopped:
			continue
		default:
		}
		if err := s.srv.ShutdownContext(sctx); err != nil {
			errs = append(errs, fmt.Errorf("stop dns server: %w", err))
		}
		<-s.stopped
	}
	return errors.Join(errs...)
}

// server is one mdns.Server running in its own goroutine.
type server struct {
	srv     *mdns.Server
	started chan struct{} // closed once it accepts queries
	done    chan error    // ActivateAndServe's result
	stopped chan struct{} // closed once done was read
}

func startServer(srv *mdns.Server) *server {
	s := &server{srv: srv, started: make(chan struct{}), done: make(chan error, 1), stopped: make(chan struct{})}
	srv.NotifyStartedFunc = func() { close(s.started) }
	go func() { s.done <- srv.ActivateAndServe() }()
	return s
}

func addrOf(pc net.PacketConn) string {
	if pc == nil {
		return ""
	}
	return pc.LocalAddr().String()
}

func listenAddr(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}
