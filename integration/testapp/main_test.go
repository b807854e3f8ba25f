package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// loopbackListeners binds every server to an ephemeral loopback port.
func loopbackListeners(t *testing.T) listeners {
	t.Helper()
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		return ln
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	return listeners{HTTP: listen(), HTTP2: listen(), TCP: listen(), UDP: pc}
}

// startApp serves on loopback ephemeral ports and stops the app when the
// test ends, failing it if shutdown was not clean.
func startApp(t *testing.T) listeners {
	t.Helper()
	ls := loopbackListeners(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, "pod-a", ls, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("serve did not stop")
		}
	})
	return ls
}

// httpGet never consults proxy settings: test traffic stays on loopback.
func httpGet(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, b
}

func TestHTTP(t *testing.T) {
	ls := startApp(t)
	for _, ln := range []net.Listener{ls.HTTP, ls.HTTP2} {
		base := "http://" + ln.Addr().String()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		tests := []struct {
			path string
			code int
			body string
		}{
			{"/", 200, "pod=pod-a path=/\n"},
			{"/some/where?q=1", 200, "pod=pod-a path=/some/where\n"},
			{"/a//b", 200, "pod=pod-a path=/a//b\n"},
			{"/healthz", 200, "ok"},
			{"/status/503", 503, "pod=pod-a path=/status/503\n"},
			{"/status/204", 204, ""},
			{"/status/abc", 400, "status code must be 200-599\n"},
			{"/status/99", 400, "status code must be 200-599\n"},
			{"/delay?ms=1", 200, "pod=pod-a path=/delay\n"},
			{"/delay?ms=x", 400, "ms must be a non-negative integer\n"},
			{"/bytes?n=-1", 400, "n must be a non-negative integer\n"},
			{"/bytes?n=0", 200, ""},
		}
		for _, tt := range tests {
			resp, body := httpGet(t, base+tt.path)
			if resp.StatusCode != tt.code || string(body) != tt.body {
				t.Errorf("GET %s%s = %d %q, want %d %q", base, tt.path, resp.StatusCode, body, tt.code, tt.body)
			}
			if got := resp.Header.Get("X-Server-Port"); got != port {
				t.Errorf("GET %s%s: X-Server-Port = %q, want %q", base, tt.path, got, port)
			}
		}
	}
}

func TestHTTPBytes(t *testing.T) {
	ls := startApp(t)
	for _, n := range []int{1, bytesChunk, 3*bytesChunk + 7} {
		url := fmt.Sprintf("http://%s/bytes?n=%d", ls.HTTP.Addr(), n)
		resp, body := httpGet(t, url)
		if resp.StatusCode != 200 || len(body) != n {
			t.Errorf("GET %s = %d, %d bytes; want 200, %d bytes", url, resp.StatusCode, len(body), n)
		}
		if resp.ContentLength != int64(n) {
			t.Errorf("GET %s: Content-Length = %d, want %d", url, resp.ContentLength, n)
		}
	}
}

func TestHTTPDelay(t *testing.T) {
	ls := startApp(t)
	start := time.Now()
	resp, _ := httpGet(t, "http://"+ls.HTTP.Addr().String()+"/delay?ms=50")
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("answered after %v, want at least 50ms", d)
	}
}

func TestTCPEcho(t *testing.T) {
	ls := startApp(t)
	conn, err := net.Dial("tcp", ls.TCP.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))

	msg := bytes.Repeat([]byte("echo me "), 100_000)
	go func() {
		_, _ = conn.Write(msg)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Errorf("echoed %d bytes, want the %d sent", len(got), len(msg))
	}
}

func TestUDPEcho(t *testing.T) {
	ls := startApp(t)
	conn, err := net.Dial("udp", ls.UDP.LocalAddr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))

	buf := make([]byte, maxDatagram)
	for i := range 3 {
		msg := []byte("datagram " + strconv.Itoa(i))
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Errorf("echo = %q, want %q", buf[:n], msg)
		}
	}
}

// TestShutdownClosesEcho checks that an idle echo client does not hold up
// the pod's exit.
func TestShutdownClosesEcho(t *testing.T) {
	ls := loopbackListeners(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, "p", ls, slog.New(slog.DiscardHandler)) }()

	conn, err := net.Dial("tcp", ls.TCP.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop with an open echo connection")
	}
}

func TestRun(t *testing.T) {
	cfg := config{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "p"}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := run(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("run: %v", err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg.TCPAddr = busy.Addr().String()
	if err := run(t.Context(), cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("run with a busy port succeeded, want an error")
	}
}

func TestPodName(t *testing.T) {
	t.Setenv("POD_NAME", "from-env")
	if got := podName(); got != "from-env" {
		t.Errorf("podName() = %q, want from-env", got)
	}
}

func TestClientVerbs(t *testing.T) {
	ls := startApp(t)
	var out strings.Builder
	if err := client(context.Background(), &out, "get", []string{"http://" + ls.HTTP.Addr().String() + "/x"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "path=/x") {
		t.Fatalf("get printed %q", out.String())
	}
	if err := client(context.Background(), &out, "get", []string{"http://" + ls.HTTP.Addr().String() + "/status/503"}); err == nil {
		t.Fatal("get of a 503 succeeded")
	}
	for verb, addr := range map[string]string{"tcp": ls.TCP.Addr().String(), "udp": ls.UDP.LocalAddr().String()} {
		out.Reset()
		if err := client(context.Background(), &out, verb, []string{addr}); err != nil || out.String() != "ping\n" {
			t.Fatalf("%s echo: %q, %v", verb, out.String(), err)
		}
	}
	out.Reset()
	if err := client(context.Background(), &out, "lookup", []string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "127.0.0.1") && !strings.Contains(out.String(), "::1") {
		t.Fatalf("lookup printed %q", out.String())
	}
}

func TestMeasureVerbs(t *testing.T) {
	ls := startApp(t)
	base := "http://" + ls.HTTP.Addr().String()
	for _, tc := range []struct {
		verb string
		args []string
		want string
	}{
		{"latency", []string{base + "/", "20"}, "p50_us="},
		{"download", []string{base + "/bytes?n=1000000"}, "bytes=1000000 "},
		{"conns", []string{ls.TCP.Addr().String(), "50"}, "ok=50 of=50"},
		{"conns", []string{ls.TCP.Addr().String(), "5", "10ms"}, "ok=5 of=5"},
		{"dns", []string{"cached", "3", "localhost"}, "p50_us="},
	} {
		var out strings.Builder
		if err := measure(context.Background(), &out, tc.verb, tc.args); err != nil || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s %v: %q, %v", tc.verb, tc.args, out.String(), err)
		}
	}
	if err := measure(context.Background(), io.Discard, "latency", []string{base, "0"}); err == nil {
		t.Error("latency with N=0 succeeded")
	}
}
