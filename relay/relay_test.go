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
