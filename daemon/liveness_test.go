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
	mux, heard, silence, _ = pairWithDelay(t)
	return mux, heard, silence
}

// pairWithDelay is pair, and delay(d) holds each of the manager's words
// back for d from then on, as a long queue on a slow path does.
func pairWithDelay(t *testing.T) (mux *yamux.Session, heard *heardConn, silence func(), delay func(time.Duration)) {
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
	go func() { // the manager reads what its streams carry
		for {
			st, err := srv.AcceptStream()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, st) }()
		}
	}()
	var quiet atomic.Bool
	var held atomic.Int64
	type word struct {
		b  []byte
		at time.Time
	}
	words := make(chan word, 1024)
	go func() { _, _ = io.Copy(c, b) }()
	go func() {
		defer close(words)
		for {
			buf := make([]byte, 4096)
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if !quiet.Load() {
				words <- word{buf[:n], time.Now().Add(time.Duration(held.Load()))}
			}
		}
	}()
	go func() {
		for w := range words {
			time.Sleep(time.Until(w.at))
			if _, err := b.Write(w.b); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { mux.Close(); srv.Close(); b.Close(); c.Close() })
	return mux, heard, func() { quiet.Store(true) }, func(d time.Duration) { held.Store(int64(d)) }
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

// An upload on a slow uplink: the manager's answers wait behind its data,
// so nothing is read for longer than the limit, but the kernel keeps
// taking the upload's writes. The session stays; once the writes stop too,
// it goes.
func TestAnUploadIsLife(t *testing.T) {
	mux, heard, silence, delay := pairWithDelay(t)
	const limit = 1500 * time.Millisecond
	go watchSilence(context.Background(), slog.New(slog.DiscardHandler), mux, heard, limit, nil, nil)
	st, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	delay(limit + 300*time.Millisecond)
	chunk := make([]byte, 32<<10)
	for end := time.Now().Add(3 * limit); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := st.Write(chunk); err != nil {
			t.Fatalf("the upload: %v", err)
		}
	}
	if mux.IsClosed() {
		t.Fatal("a session whose upload the kernel takes was closed")
	}
	silence()
	select {
	case <-mux.CloseChan():
	case <-time.After(4 * limit):
		t.Fatal("a session silent both ways stayed open")
	}
}
