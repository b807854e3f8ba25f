package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// httpShutdownTimeout bounds graceful shutdown; it stays well under the
// default 30s pod termination grace period.
const httpShutdownTimeout = 5 * time.Second

// bytesChunk is the write size for /bytes: big enough that per-write
// overhead does not show up in bulk-download benchmarks.
const bytesChunk = 256 << 10

// httpHandler answers every path with the pod name, plus a few special paths
// that tests and benchmarks use.
type httpHandler struct {
	pod string
	// chunk is filled once and only read afterwards, so concurrent /bytes
	// requests can share it.
	chunk []byte
}

func newHTTPHandler(pod string) http.Handler {
	chunk := make([]byte, bytesChunk)
	for i := range chunk {
		chunk[i] = 'a' + byte(i%26)
	}
	return withPortHeader(&httpHandler{pod: pod, chunk: chunk})
}

// ServeHTTP dispatches by hand rather than with http.ServeMux, which would
// redirect unclean paths; tests expect every other path to get a 200.
func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/healthz":
		h.healthz(w, r)
	case p == "/bytes":
		h.bytes(w, r)
	case p == "/delay":
		h.delay(w, r)
	case p == "/env":
		h.env(w)
	case p == "/upload":
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "received=%d\n", n)
	case strings.HasPrefix(p, "/status/"):
		h.status(w, r)
	default:
		h.reply(w, r, http.StatusOK)
	}
}

// withPortHeader tells multi-port Service tests which container port
// answered, without changing the body.
func withPortHeader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if _, port, err := net.SplitHostPort(a.String()); err == nil {
				w.Header().Set("X-Server-Port", port)
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (h *httpHandler) body(r *http.Request) string {
	return fmt.Sprintf("pod=%s path=%s\n", h.pod, r.URL.Path)
}

func (h *httpHandler) reply(w http.ResponseWriter, r *http.Request, code int) {
	if code == http.StatusNoContent || code == http.StatusNotModified {
		w.WriteHeader(code) // these must not carry a body
		return
	}
	b := h.body(r)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b))
}

func (h *httpHandler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok"))
}

func (h *httpHandler) status(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
	// 1xx would be sent as an informational header followed by a 200, which
	// is not what a caller asking for it means.
	if err != nil || code < 200 || code > 599 {
		http.Error(w, "status code must be 200-599", http.StatusBadRequest)
		return
	}
	h.reply(w, r, code)
}

func (h *httpHandler) delay(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || ms < 0 {
		http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
		return
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	h.reply(w, r, http.StatusOK)
}

func (h *httpHandler) bytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	for n > 0 {
		c := h.chunk[:min(n, int64(len(h.chunk)))]
		if _, err := w.Write(c); err != nil {
			return // client went away
		}
		n -= int64(len(c))
	}
}

// serveHTTP serves h on ln until ctx is done, then shuts down gracefully;
// idle, when not 0, closes connections kept alive that long without a request.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, idle time.Duration) error {
	// HTTP/1.1 and h2c (prior knowledge), as gRPC-style clients speak it.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       idle,
		Protocols:         &protocols,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		if !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("shut down http on %s: %w", ln.Addr(), err)
		}
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	}
	return nil
}

// env answers the process's environment as a JSON object, so tests can
// compare it with what `tunnel intercept --env-file` wrote.
func (h *httpHandler) env(w http.ResponseWriter) {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(env)
}
