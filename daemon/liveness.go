package daemon

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// The session's keepalive: the daemon pings the manager every second, so a
// live session hears from it at least that often. One that has heard
// nothing for silenceLimit is dead, whatever TCP thinks: a laptop that
// changed networks or slept, a port-forward the API server or kubelet
// dropped without a word. It is closed at once and the session reconnects,
// instead of waiting for TCP's retransmissions to give up (minutes) or
// yamux's own timeout.
const (
	keepAliveInterval = time.Second
	silenceLimit      = 4 * time.Second
)

// heardConn notes when its peer last said anything.
type heardConn struct {
	net.Conn
	last atomic.Int64 // UnixNano of the last read that returned bytes
}

func newHeardConn(c net.Conn) *heardConn {
	h := &heardConn{Conn: c}
	h.last.Store(time.Now().UnixNano())
	return h
}

func (h *heardConn) Read(p []byte) (int, error) {
	n, err := h.Conn.Read(p)
	if n > 0 {
		h.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (h *heardConn) silence(now time.Time) time.Duration {
	return now.Sub(time.Unix(0, h.last.Load()))
}

// watchSilence closes mux once its connection has been silent past limit,
// and returns when mux closes or ctx ends. poke asks for a look at once
// (the laptop's addresses changed). pathDied, if set, runs before mux
// closes for either reason: the other connections on that path are as dead.
func watchSilence(ctx context.Context, log *slog.Logger, mux *yamux.Session, c *heardConn, limit time.Duration, poke <-chan struct{}, pathDied func()) {
	dead := func() {
		if pathDied != nil {
			pathDied()
		}
		mux.Close()
	}
	t := time.NewTicker(limit / 4)
	defer t.Stop()
	for {
		select {
		case <-mux.CloseChan():
			return
		case <-ctx.Done():
			return
		case <-poke:
			// A ping answered within a second says the path still works;
			// none says it went with the old address.
			done := make(chan error, 1)
			go func() { _, err := mux.Ping(); done <- err }()
			select {
			case err := <-done:
				if err == nil {
					continue
				}
			case <-time.After(time.Second):
			case <-mux.CloseChan():
				return
			}
			log.Warn("the laptop's network changed and the manager no longer answers; reconnecting")
			dead()
			return
		case now := <-t.C:
			if s := c.silence(now); s > limit {
				log.Warn("no word from the manager; reconnecting", "silent_for", s.Round(100*time.Millisecond))
				dead()
				return
			}
		}
	}
}
