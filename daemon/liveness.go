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
// live session hears from it at least that often. One that has shown no
// sign of life for silenceLimit is dead, whatever TCP thinks: a laptop
// that changed networks or slept, a port-forward the API server or kubelet
// dropped without a word. It is closed at once and the session reconnects,
// instead of waiting for TCP's retransmissions to give up (minutes) or
// yamux's own timeout.
const (
	keepAliveInterval = time.Second
	silenceLimit      = 4 * time.Second
	// pokeWait is how long a look after a network change waits for a sign
	// of life.
	pokeWait = 1500 * time.Millisecond
	// bulkWrite is a write of an upload's data. Small writes (pings,
	// window updates, a request's headers) go into the socket's buffer
	// whether or not the path lives; an upload's fill it within a second
	// once the path is dead, and then stop.
	bulkWrite = 16 << 10
)

// heardConn notes when its path last showed life: bytes read from the
// manager, or an upload's data the kernel took. An upload's pings wait
// behind its data, and its window updates come every few megabytes, so on
// a slow uplink reads alone would fall silent on a healthy path.
type heardConn struct {
	net.Conn
	base time.Time    // the clock's zero: time.Since keeps to the monotonic clock
	last atomic.Int64 // since base, when the path last showed life
}

func newHeardConn(c net.Conn) *heardConn {
	return &heardConn{Conn: c, base: time.Now()}
}

func (h *heardConn) Read(p []byte) (int, error) {
	n, err := h.Conn.Read(p)
	if n > 0 {
		h.alive()
	}
	return n, err
}

func (h *heardConn) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	if n > bulkWrite {
		h.alive()
	}
	return n, err
}

func (h *heardConn) alive()                  { h.last.Store(int64(time.Since(h.base))) }
func (h *heardConn) now() time.Duration      { return time.Since(h.base) }
func (h *heardConn) lastLife() time.Duration { return time.Duration(h.last.Load()) }

// watchSilence closes mux once its path has shown no life for limit, and
// returns when mux closes or ctx ends. poke asks for a look at once (an
// address of this machine went away): a ping answered, or any other sign
// of life, within pokeWait keeps the session. pathDied, if set, runs before
// mux closes for either reason: the other connections on that path are as
// dead.
func watchSilence(ctx context.Context, log *slog.Logger, mux *yamux.Session, c *heardConn, limit time.Duration, poke <-chan struct{}, pathDied func()) {
	dead := func() {
		if pathDied != nil {
			pathDied()
		}
		mux.Close()
	}
	every := limit / 4
	t := time.NewTicker(every)
	defer t.Stop()
	lastTick := c.now()
	for {
		select {
		case <-mux.CloseChan():
			return
		case <-ctx.Done():
			return
		case <-poke:
			poked := c.now()
			pong := make(chan error, 1)
			go func() { _, err := mux.Ping(); pong <- err }() // ends by mux's own timeout at the latest
			if waitLife(mux, c, poked, pong) {
				continue
			}
			log.Warn("the laptop's network changed and the manager no longer answers; reconnecting")
			dead()
			return
		case <-t.C:
			now := c.now()
			late := now-lastTick > every+limit/2 // this process was stopped or starved
			lastTick = now
			if late {
				// Replies may sit unread in the socket: look again once
				// the reader has had its turn.
				continue
			}
			if s := now - c.lastLife(); s > limit {
				log.Warn("no word from the manager; reconnecting", "silent_for", s.Round(100*time.Millisecond))
				dead()
				return
			}
		}
	}
}

// waitLife waits up to pokeWait for the ping's answer or any other sign of
// life after since; it says whether one came.
func waitLife(mux *yamux.Session, c *heardConn, since time.Duration, pong <-chan error) bool {
	deadline := time.After(pokeWait)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-pong:
			if err == nil {
				return true
			}
			return c.lastLife() > since
		case <-tick.C:
			if c.lastLife() > since {
				return true
			}
		case <-deadline:
			return c.lastLife() > since
		case <-mux.CloseChan():
			return false
		}
	}
}
