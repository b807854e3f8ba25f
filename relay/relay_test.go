package relay

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"tunnel.dev/tunnel/internal/testnet"
)

type count struct{ n atomic.Int64 }

func (c *count) Add(f float64) { c.n.Add(int64(f)) }

// client ⇄ [a relay b] ⇄ server: the client's half-close reaches the
// server, whose answer still comes back; bytes are counted each way.
func TestConnsPassesHalfClosesAndCounts(t *testing.T) {
	for _, o := range []Options{{}, {BufAB: make([]byte, 7), BufBA: make([]byte, 5)}, {Buffers: &Buffers{Size: 3}}} {
		client, a := testnet.Pair(t)
		b, server := testnet.Pair(t)
		ab, ba := &count{}, &count{}
		o.AB, o.BA = ab, ba
		done := make(chan struct{})
		go func() { Conns(context.Background(), a, b, o); close(done) }()

		go func() {
			req, _ := io.ReadAll(server) // until the client's half-close
			_, _ = server.Write(append([]byte("got "), req...))
			server.Close()
		}()
		_, _ = client.Write([]byte("a request in several buffers"))
		_ = client.CloseWrite()
		resp, err := io.ReadAll(client)
		if err != nil || string(resp) != "got a request in several buffers" {
			t.Fatalf("answer %q, %v", resp, err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the relay did not end after both directions did")
		}
		if ab.n.Load() != 28 || ba.n.Load() != 32 {
			t.Errorf("counted %d and %d bytes, want 28 and 32", ab.n.Load(), ba.n.Load())
		}
	}
}

// Ending the context aborts a relay whose both ends are idle.
func TestConnsEndsWithItsContext(t *testing.T) {
	client, a := testnet.Pair(t)
	b, _ := testnet.Pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Conns(ctx, a, b, Options{}); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay outlived its context")
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("the client's connection is still open")
	}
}

// An idle relay holds no large buffer; a bulk transfer borrows one per
// direction while it flows and gives it back.
func TestBuffersAreLentOnlyWhileDataFlows(t *testing.T) {
	pool := &Buffers{Size: 256 << 10}
	client, a := testnet.Pair(t)
	b, server := testnet.Pair(t)
	go Conns(context.Background(), a, b, Options{Buffers: pool})
	chat := func(n int) {
		t.Helper()
		msg := make([]byte, n)
		go func() { _, _ = client.Write(msg) }()
		if _, err := io.ReadFull(server, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	chat(100)
	time.Sleep(50 * time.Millisecond)
	if n := pool.Lent(); n != 0 {
		t.Errorf("after a short message, %d large buffers are lent, want 0", n)
	}
	chat(8 << 20)
	chat(100) // a short read ends the burst
	deadline := time.Now().Add(2 * time.Second)
	for pool.Lent() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := pool.Lent(); n != 0 {
		t.Errorf("after the burst ended, %d large buffers are lent, want 0", n)
	}
	client.Close()
	server.Close()
}

// Once the client has ended its side, a server that neither answers nor
// closes holds the relay only for HalfClosedIdle; one that keeps answering
// is not cut.
func TestHalfClosedIdleBoundsASilentServer(t *testing.T) {
	client, a := testnet.Pair(t)
	b, server := testnet.Pair(t)
	done := make(chan struct{})
	go func() {
		Conns(context.Background(), a, b, Options{HalfClosedIdle: 200 * time.Millisecond})
		close(done)
	}()
	client.Close() // EOF toward the server
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay still holds a half-closed connection whose server is silent")
	}
	server.Close()

	client, a = testnet.Pair(t)
	b, server = testnet.Pair(t)
	done = make(chan struct{})
	go func() {
		Conns(context.Background(), a, b, Options{HalfClosedIdle: 200 * time.Millisecond})
		close(done)
	}()
	_ = client.CloseWrite()
	got := make(chan int, 1)
	go func() { n, _ := io.Copy(io.Discard, client); got <- int(n) }()
	for range 6 { // 600 ms of answers, a piece every 100 ms
		if _, err := server.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	server.Close()
	if n := <-got; n != 6 {
		t.Errorf("the client got %d bytes of a slow answer, want all 6", n)
	}
	<-done
}
