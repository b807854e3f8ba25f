package netstack

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness wires a client stack, the fake device, the Stack under test and
// a fake dialer.
type harness struct {
	dev    *chanDevice
	client *client
	dialer *fakeDialer
	stack  *Stack
	logs   *logBuffer
	once   sync.Once
}

func newHarness(t testing.TB, cfg Config, d *fakeDialer) *harness {
	t.Helper()
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = defaultMTU
	}
	dev := newChanDevice(mtu, 64)
	c := newClient(t, dev)
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(logger, dev, d, cfg)
	if err != nil {
		dev.Close()
		c.close()
		t.Fatalf("New: %v", err)
	}
	h := &harness{dev: dev, client: c, dialer: d, stack: s, logs: logs}
	t.Cleanup(func() {
		h.close()
		if dev.badOffset.Load() {
			t.Error("the stack used a device offset under 10 bytes")
		}
		if t.Failed() {
			t.Logf("stack log:\n%s", logs)
		}
	})
	return h
}

// close tears everything down in the daemon's order: stack, then device.
func (h *harness) close() {
	h.once.Do(func() {
		h.stack.Close()
		h.dev.Close()
		h.client.close()
		h.dialer.relays.Wait()
	})
}

// logBuffer collects the stack's log for a failing test.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

func timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
