package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// pair is a yamux client over a heardConn and a manager's yamux server
// behind a relay; silence() makes the manager's words stop reaching the
// client while the connection stays open, as on a dead network path.
func pair(t *testing.T) (mux *yamux.Session, heard *heardConn, silence func()) {
	t.Helper()
	a, b := net.Pipe()
	c, d := net.Pipe()
	heard = newHeardConn(a)
	mux, err := yamux.Client(heard, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := yamux.Server(d, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	var quiet atomic.Bool
	go func() { _, _ = io.Copy(c, b) }()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if !quiet.Load() {
				if _, err := b.Write(buf[:n]); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() { mux.Close(); srv.Close(); b.Close(); c.Close() })
	return mux, heard, func() { quiet.Store(true) }
}

// A manager that answers keeps the session; one that falls silent (its
// packets lost with the laptop's old address) is dropped once the limit
// passes, not when TCP gives up.
func TestSilenceEndsTheSession(t *testing.T) {
	mux, heard, silence := pair(t)
	const limit = 1500 * time.Millisecond
	go watchSilence(context.Background(), slog.New(slog.DiscardHandler), mux, heard, limit, nil, nil)
	time.Sleep(2 * limit)
	if mux.IsClosed() {
		t.Fatal("a session whose manager answers its keepalives was closed")
	}
	silence()
	silentAt := time.Now()
	select {
	case <-mux.CloseChan():
		if d := time.Since(silentAt); d > limit+limit/2+keepAliveInterval {
			t.Errorf("closed %s after the manager fell silent, limit %s", d, limit)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent session stayed open")
	}
}

// A poke (the laptop's addresses changed) looks at once: a ping the
// manager answers keeps the session, one it does not closes it within a
// second or so.
func TestNetworkChangeLooksAtOnce(t *testing.T) {
	mux, heard, silence := pair(t)
	poke := make(chan struct{}, 1)
	go watchSilence(context.Background(), slog.New(slog.DiscardHandler), mux, heard, time.Minute, poke, nil)
	poke <- struct{}{}
	time.Sleep(500 * time.Millisecond)
	if mux.IsClosed() {
		t.Fatal("a poke closed a session whose manager answers")
	}
	silence()
	start := time.Now()
	poke <- struct{}{}
	select {
	case <-mux.CloseChan():
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("closed %s after the poke", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a poke with no answer left the session open")
	}
}
