package netstack

import (
	"fmt"
	"io"
	"testing"
	"time"
)

// BenchmarkTCPThroughput moves 256 MiB per operation over one connection
// through the client stack, the fake device, the Stack and a loopback
// server: upload into a sink, download from a source. The client stack
// costs about as much as the Stack, so the Stack alone is faster than
// this reports.
func BenchmarkTCPThroughput(b *testing.B) {
	const size = 256 << 20
	for _, mtu := range []int{1500, 9000} {
		b.Run(fmt.Sprintf("upload/mtu=%d", mtu), func(b *testing.B) {
			total := make(chan int64, 1)
			d := &fakeDialer{tcp: serveTCP(b, sink(total))}
			h := newHarness(b, Config{MTU: mtu}, d)
			buf := make([]byte, 256<<10)
			b.SetBytes(size)
			for b.Loop() {
				conn, err := h.client.dialTCP(timeout(b, time.Minute), svcV4)
				if err != nil {
					b.Fatal(err)
				}
				for sent := 0; sent < size; sent += len(buf) {
					if _, err := conn.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				conn.CloseWrite()
				if n := <-total; n != size {
					b.Fatalf("sink got %d bytes, want %d", n, size)
				}
				conn.Close()
			}
			reportRetransmits(b, h)
		})
		b.Run(fmt.Sprintf("download/mtu=%d", mtu), func(b *testing.B) {
			d := &fakeDialer{tcp: serveTCP(b, source(size))}
			h := newHarness(b, Config{MTU: mtu}, d)
			b.SetBytes(size)
			for b.Loop() {
				conn, err := h.client.dialTCP(timeout(b, time.Minute), svcV4)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, conn)
				if err != nil || n != size {
					b.Fatalf("read %d bytes, %v; want %d", n, err, size)
				}
				conn.Close()
			}
			reportRetransmits(b, h)
		})
	}
}

// reportRetransmits shows segments either stack sent again: a sign of
// packets dropped on the way (a full queue, say).
func reportRetransmits(b *testing.B, h *harness) {
	n := h.stack.ipstack.Stats().TCP.Retransmits.Value() + h.client.stack.Stats().TCP.Retransmits.Value()
	b.ReportMetric(float64(n)/float64(b.N), "retransmits/op")
}
