package sidecar

import (
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseCapture(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Capture
		ok   bool
	}{
		{"8080=80", Capture{Listen: 8080, App: 80}, true},
		{"1=65535", Capture{Listen: 1, App: 65535}, true},
		{"15001=8080", Capture{Listen: 15001, App: 8080}, true},
		{"", Capture{}, false},
		{"8080", Capture{}, false},
		{"8080=", Capture{}, false},
		{"=80", Capture{}, false},
		{"0=80", Capture{}, false},
		{"8080=0", Capture{}, false},
		{"65536=80", Capture{}, false},
		{"8080=-1", Capture{}, false},
		{"a=b", Capture{}, false},
		{"8080=80=90", Capture{}, false},
		{" 8080=80", Capture{}, false},
		{"8080:80", Capture{}, false},
	} {
		got, err := ParseCapture(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseCapture(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "LISTEN=APP") {
			t.Errorf("ParseCapture(%q): error %q does not show the form", tc.in, err)
		}
		if tc.ok && got.String() != tc.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
}

func TestLooksLikeHTTP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"GET / HTTP/1.1\r\n", true},
		{"GET ", true},
		{"POST /orders HTTP/1.1\r\n", true},
		{"PUT /x", true},
		{"HEAD /", true},
		{"DELETE /x", true},
		{"PATCH /x", true},
		{"OPTIONS * HTTP/1.1", true},
		{"CONNECT host:443 HTTP/1.1", true},
		{"TRACE /", true},
		{h2Preface, true},
		{h2Preface + "\x00\x00\x12\x04", true}, // the preface, then a SETTINGS frame
		{"PRI", true},
		{"PRI * HT", true},
		{"PR", false},
		{"PRI * HTTP/1.1", false},
		{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false}, // TLS ClientHello
		{"\x16\x03", false},
		{"SSH-2.0-OpenSSH_9.6\r\n", false},
		{"GET", false}, // no space yet: not known to be a method
		{"GE", false},
		{"G", false},
		{"", false},
		{"get / HTTP/1.1", false},
		{"GETX / HTTP/1.1", false},
		{"POS", false},
		{"*1\r\n$4\r\nPING\r\n", false}, // Redis
	} {
		if got := looksLikeHTTP([]byte(tc.in)); got != tc.want {
			t.Errorf("looksLikeHTTP(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if looksLikeHTTP(nil) {
		t.Error("looksLikeHTTP(nil) = true")
	}
}

func newReplay(r io.Reader) *replayReader {
	rr := &replayReader{r: r, recording: true}
	rr.cond = sync.NewCond(&rr.mu)
	return rr
}

// endless reads as an endless run of 'x'.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

type readResult struct {
	n   int
	err error
}

// fill reads rr until it holds maxReplay bytes, as the upstream copy would.
func fill(t *testing.T, rr *replayReader) {
	t.Helper()
	p := make([]byte, 24<<10) // not a divisor of maxReplay: the last read is cut short
	total := 0
	for total < maxReplay {
		n, err := rr.Read(p)
		if err != nil || n == 0 {
			t.Fatalf("read %d, %v after %d bytes", n, err, total)
		}
		total += n
	}
	if total != maxReplay || len(rr.taken()) != maxReplay {
		t.Fatalf("read %d bytes, recorded %d; want exactly %d", total, len(rr.taken()), maxReplay)
	}
}

// blockedRead starts a Read of rr and checks it waits.
func blockedRead(t *testing.T, rr *replayReader) <-chan readResult {
	t.Helper()
	done := make(chan readResult, 1)
	go func() {
		n, err := rr.Read(make([]byte, 1024))
		done <- readResult{n, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("a read past maxReplay returned %d, %v; want it to wait", r.n, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	return done
}

func result(t *testing.T, done <-chan readResult) readResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the read is still blocked")
		return readResult{}
	}
}

func TestReplayReaderRecords(t *testing.T) {
	rr := newReplay(strings.NewReader("hello, world"))
	p := make([]byte, 5)
	for _, want := range []string{"hello", ", wor", "ld"} {
		n, err := rr.Read(p)
		if err != nil || string(p[:n]) != want {
			t.Fatalf("read %q, %v; want %q", p[:n], err, want)
		}
	}
	if got := string(rr.taken()); got != "hello, world" {
		t.Errorf("taken %q", got)
	}
	if n, err := rr.Read(p); n != 0 || err != io.EOF {
		t.Errorf("at the end: %d, %v; want EOF", n, err)
	}
}

func TestReplayReaderStopUnblocksAndDropsTheBuffer(t *testing.T) {
	rr := newReplay(endless{})
	fill(t, rr)
	done := blockedRead(t, rr)
	rr.stop()
	if r := result(t, done); r.err != nil || r.n != 1024 {
		t.Errorf("after stop the waiting read got %d, %v; want 1024 bytes", r.n, r.err)
	}
	if b := rr.taken(); b != nil {
		t.Errorf("after stop %d bytes are kept, want none", len(b))
	}
	// No longer recording: reads pass through whole, unbounded.
	p := make([]byte, 2*maxReplay)
	if n, err := rr.Read(p); err != nil || n != len(p) {
		t.Errorf("read after stop: %d, %v", n, err)
	}
	if b := rr.taken(); b != nil {
		t.Errorf("a read after stop was recorded: %d bytes", len(b))
	}
}

func TestReplayReaderAbortUnblocksAndKeepsTheBuffer(t *testing.T) {
	rr := newReplay(endless{})
	fill(t, rr)
	done := blockedRead(t, rr)
	rr.abort()
	if r := result(t, done); r.n != 0 || !errors.Is(r.err, io.ErrClosedPipe) {
		t.Errorf("after abort the waiting read got %d, %v; want io.ErrClosedPipe", r.n, r.err)
	}
	if got := len(rr.taken()); got != maxReplay {
		t.Errorf("after abort %d bytes are kept, want %d", got, maxReplay)
	}
}

func TestReplayReaderAbortFailsLaterReads(t *testing.T) {
	rr := newReplay(strings.NewReader("hello, world"))
	p := make([]byte, 5)
	if n, err := rr.Read(p); err != nil || n != 5 {
		t.Fatalf("read %d, %v", n, err)
	}
	rr.abort()
	for range 2 {
		if n, err := rr.Read(p); n != 0 || !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("read after abort: %d, %v; want io.ErrClosedPipe", n, err)
		}
	}
	if got := string(rr.taken()); got != "hello" {
		t.Errorf("taken %q, want what was read before abort", got)
	}
}

// FuzzLooksLikeHTTP: a client's first bytes, whatever they are, get an
// answer and no panic; what an HTTP client sends is HTTP.
func FuzzLooksLikeHTTP(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", "PRI * HTTP/2.0\r\n", "\x16\x03\x01", "POST", "", "\x00\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := looksLikeHTTP(b)
		if len(b) > 0 && strings.HasPrefix("GET / HTTP/1.1\r\n", string(b)) && !got && len(b) >= 4 {
			t.Errorf("looksLikeHTTP(%q) = false for the start of a GET", b)
		}
	})
}
