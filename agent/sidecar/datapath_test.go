package sidecar

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

func TestNoInterceptTheAppAnswers(t *testing.T) {
	e := newEnv(t, false)
	e.set()
	if code, body, _ := e.request("GET", ""); code != http.StatusOK || body != "app" {
		t.Errorf("GET: %d %q, want 200 app", code, body)
	}
	if h := next(t, e.appHits, "app"); h.method != "GET" || h.path != "/orders" {
		t.Errorf("the app got %+v", h)
	}
	// An intercept on another port of the workload changes nothing here.
	other := intercept(1, "other", managerpb.InterceptMode_GLOBAL)
	other.Spec.Port = testPort + 1
	e.answer(1, e.serveHTTPMode)
	e.set(other)
	if code, body, _ := e.request("POST", "payload"); code != http.StatusOK || body != "app" {
		t.Errorf("POST: %d %q, want 200 app", code, body)
	}
	if h := next(t, e.appHits, "app"); h.body != "payload" {
		t.Errorf("the app got %+v", h)
	}
	none(t, e.laptopHits, "laptop")

	raw := newEnv(t, true)
	c := raw.dialRaw("hello\n")
	if got := readN(t, c, len("app:hello\n")); got != "app:hello\n" {
		t.Errorf("raw: %q, want the app's echo", got)
	}
}

func TestGlobalInterceptTheLaptopAnswers(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.serveHTTPMode)
	e.set(intercept(1, "g", managerpb.InterceptMode_GLOBAL))
	for _, method := range []string{"GET", "POST"} {
		code, body, _ := e.request(method, "payload", "X-Dev", "anyone")
		if code != http.StatusOK || body != "laptop" {
			t.Errorf("%s: %d %q, want 200 laptop", method, code, body)
		}
		if h := next(t, e.laptopHits, "laptop"); h.method != method || h.path != "/orders" || h.dev != "anyone" {
			t.Errorf("the laptop got %+v", h)
		}
	}
	none(t, e.appHits, "app")
}

// The kubelet's probes reach the app under a global intercept: on a port
// redirected inside the pod they pass the sidecar.
func TestKubeletProbesReachTheApp(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.serveHTTPMode)
	e.set(intercept(1, "g", managerpb.InterceptMode_GLOBAL))
	code, body, _ := e.request("GET", "", "User-Agent", "kube-probe/1.35")
	if code != http.StatusOK || body != "app" {
		t.Errorf("a kubelet probe: %d %q, want 200 app", code, body)
	}
	none(t, e.laptopHits, "laptop")
}

// The laptop hears who the client is, whatever the client claims; the app
// gets the request as a proxy passes it on (the client's list, then the
// client).
func TestInterceptedRequestsNameTheirClient(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.serveHTTPMode)
	e.set(intercept(1, "g", managerpb.InterceptMode_GLOBAL))
	e.request("GET", "", "X-Forwarded-For", "127.0.0.1, 10.0.0.1")
	if h := next(t, e.laptopHits, "laptop"); h.xff != "127.0.0.1" {
		t.Errorf("the laptop got X-Forwarded-For %q, want the client's address alone", h.xff)
	}
	e.set()
	e.request("GET", "", "X-Forwarded-For", "203.0.113.7")
	if h := next(t, e.appHits, "app"); h.xff != "203.0.113.7, 127.0.0.1" {
		t.Errorf("the app got X-Forwarded-For %q, want what the client sent, then the client", h.xff)
	}
}

func TestGlobalInterceptRefusedFallsBackToTheApp(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.refuseMode(0))
	g := intercept(1, "g", managerpb.InterceptMode_GLOBAL)
	e.set(g)
	if code, body, _ := e.request("POST", "payload"); code != http.StatusOK || body != "app" {
		t.Errorf("POST: %d %q, want the app's 200 app", code, body)
	}
	if h := next(t, e.appHits, "app"); h.body != "payload" {
		t.Errorf("the app got %+v, want the whole body after the fallback", h)
	}

	noFallback := intercept(2, "strict", managerpb.InterceptMode_GLOBAL)
	noFallback.Spec.NoFallback = true
	e.answer(2, e.refuseMode(0))
	e.set(noFallback)
	code, body, _ := e.request("GET", "")
	if code != http.StatusBadGateway || !strings.Contains(body, "intercept strict") {
		t.Errorf("GET with --no-fallback: %d %q, want 502 naming the intercept", code, body)
	}
	none(t, e.appHits, "app")
}

func TestRawGlobalIntercept(t *testing.T) {
	e := newEnv(t, true)
	e.answer(1, echoMode)
	e.set(intercept(1, "g", managerpb.InterceptMode_GLOBAL))
	c := e.dialRaw("hello\n")
	if got := readN(t, c, len("laptop:hello\n")); got != "laptop:hello\n" {
		t.Fatalf("%q, want the laptop's echo", got)
	}
	if _, err := io.WriteString(c, "more"); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, 4); got != "more" {
		t.Errorf("%q, want more", got)
	}
	// A half-close passes through: the laptop's echo ends, then the connection.
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("after our half-close: %q, %v; want EOF", rest, err)
	}
}

func TestRawGlobalInterceptRefusedReplaysToTheApp(t *testing.T) {
	e := newEnv(t, true)
	e.answer(1, e.refuseMode(len("hello\n")))
	e.set(intercept(1, "g", managerpb.InterceptMode_GLOBAL))
	c := e.dialRaw("hello\n")
	select {
	case got := <-e.refused:
		if string(got) != "hello\n" {
			t.Errorf("the laptop saw %q before refusing, want the client's first bytes", got)
		}
	case <-waitLong():
		t.Fatal("the laptop's stream never came")
	}
	if got := readN(t, c, len("app:hello\n")); got != "app:hello\n" {
		t.Fatalf("%q, want the app's echo of the replayed bytes", got)
	}
	if _, err := io.WriteString(c, "more"); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, 4); got != "more" {
		t.Errorf("%q, want more", got)
	}

	// With --no-fallback a connection that is not HTTP is just closed.
	strict := intercept(2, "strict", managerpb.InterceptMode_GLOBAL)
	strict.Spec.NoFallback = true
	e.answer(2, e.refuseMode(len("hello\n")))
	e.set(strict)
	c = e.dialRaw("hello\n")
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Errorf("with --no-fallback: %q, %v; want a bare close", rest, err)
	}
}

func TestPersonalInterceptTakesOnlyItsRequests(t *testing.T) {
	e := newEnv(t, false)
	ada := intercept(1, "ada", managerpb.InterceptMode_PERSONAL)
	ada.Spec.HeaderName, ada.Spec.HeaderValue = "X-Dev", "ada"
	e.answer(1, e.serveHTTPMode)
	e.set(ada)
	for _, tc := range []struct {
		header []string
		want   string
	}{
		{[]string{"X-Dev", "ada"}, "laptop"},
		{[]string{"x-dev", "ada"}, "laptop"},
		{nil, "app"},
		{[]string{"X-Dev", "bob"}, "app"},
		{[]string{"X-Dev", "Ada"}, "app"},
		{[]string{"X-Other", "ada"}, "app"},
	} {
		code, body, _ := e.request("GET", "", tc.header...)
		if code != http.StatusOK || body != tc.want {
			t.Errorf("GET with %q: %d %q, want 200 %s", tc.header, code, body, tc.want)
			continue
		}
		hits, other := e.appHits, e.laptopHits
		if tc.want == "laptop" {
			hits, other = e.laptopHits, e.appHits
		}
		next(t, hits, tc.want)
		none(t, other, "other side")
	}
}

func TestMirrorTheAppAnswersTheLaptopGetsACopy(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.serveHTTPMode)
	e.set(intercept(1, "m", managerpb.InterceptMode_MIRROR))
	code, body, _ := e.request("POST", "payload", "X-Dev", "ada")
	if code != http.StatusOK || body != "app" {
		t.Errorf("POST: %d %q, want the app's 200 app", code, body)
	}
	if h := next(t, e.appHits, "app"); h.body != "payload" {
		t.Errorf("the app got %+v", h)
	}
	want := hit{"POST", "/orders", "ada", "payload", "127.0.0.1"}
	if h := next(t, e.laptopHits, "laptop"); h != want {
		t.Errorf("the mirror got %+v, want %+v", h, want)
	}
}

func TestProbeIsAnsweredByTheSidecar(t *testing.T) {
	e := newEnv(t, false)
	e.answer(1, e.serveHTTPMode)
	g := intercept(1, "g", managerpb.InterceptMode_GLOBAL)
	g.DirectKey = bytes.Repeat([]byte{7}, rpc.DirectKeyLen)
	e.set(g)
	code, _, header := e.request("GET", "", rpc.ProbeHeader, "sidecar")
	if code != http.StatusNoContent || header.Get(rpc.SidecarHeader) != "web-1" {
		t.Errorf("probe: %d, %s %q; want 204 naming web-1", code, rpc.SidecarHeader, header.Get(rpc.SidecarHeader))
	}
	none(t, e.appHits, "app")
	none(t, e.laptopHits, "laptop")
	// A probe with an intercept's token is told whether the sidecar has
	// it; any other probe (an id, a guess) learns nothing of intercepts.
	for probe, want := range map[string]string{
		rpc.ProbeToken(g.DirectKey):                               "yes",
		rpc.ProbeToken(bytes.Repeat([]byte{8}, rpc.DirectKeyLen)): "no",
		"1": "",
	} {
		if _, _, header := e.request("GET", "", rpc.ProbeHeader, probe); header.Get(rpc.ProbeHasHeader) != want {
			t.Errorf("probe %q: %s %q, want %q", probe, rpc.ProbeHasHeader, header.Get(rpc.ProbeHasHeader), want)
		}
	}
}

func TestRemovedInterceptClosesItsConnections(t *testing.T) {
	e := newEnv(t, true)
	e.answer(1, echoMode)
	e.answer(2, echoMode)
	g := intercept(1, "g", managerpb.InterceptMode_GLOBAL)
	e.set(g)
	c := e.dialRaw("hi\n")
	if got := readN(t, c, len("laptop:hi\n")); got != "laptop:hi\n" {
		t.Fatalf("%q, want the laptop's echo", got)
	}
	// A change that keeps the intercept keeps the connection.
	mirror := intercept(2, "m", managerpb.InterceptMode_MIRROR)
	e.set(g, mirror)
	if _, err := io.WriteString(c, "still\n"); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, len("still\n")); got != "still\n" {
		t.Fatalf("%q after an unrelated change", got)
	}

	e.set(mirror)
	closed(t, c)
	// The next connection goes to the app.
	c = e.dialRaw("again\n")
	if got := readN(t, c, len("app:again\n")); got != "app:again\n" {
		t.Errorf("%q, want the app's echo", got)
	}
}

// A port whose app greets its clients is relayed at once once the app has
// been heard first twice in a row; a client that speaks first resets that.
func TestServerFirstPortIsNoLongerSniffed(t *testing.T) {
	e := newEnv(t, true) // the app writes "app:" before it reads
	e.set()
	greeted := func() {
		t.Helper()
		c := e.dialRaw("") // the client waits for the greeting
		if got := readN(t, c, len("app:")); got != "app:" {
			t.Fatalf("greeting %q", got)
		}
		c.Close()
	}
	greeted()
	if e.cp.serverFirst.Load() {
		t.Fatal("one greeting made the port server-first")
	}
	c := e.dialRaw("hi\n") // a client that speaks first
	if got := readN(t, c, len("app:hi\n")); got != "app:hi\n" {
		t.Fatalf("echo %q", got)
	}
	greeted()
	if e.cp.serverFirst.Load() {
		t.Fatal("greetings not in a row made the port server-first")
	}
	greeted()
	if !e.cp.serverFirst.Load() {
		t.Fatal("two greetings in a row did not make the port server-first")
	}
	greeted() // relayed at once now, and still answered
}

// An HTTP port is never taken for a server-first one, however long its
// clients wait before they send (a preconnected pool).
func TestHTTPPortStaysSniffed(t *testing.T) {
	e := newEnv(t, false)
	e.set()
	for range 3 {
		c := e.dialRaw("")
		time.Sleep(80 * time.Millisecond) // past the sniff
		if _, err := io.WriteString(c, "GET /orders HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, len("HTTP/1.1 200")); got != "HTTP/1.1 200" {
			t.Fatalf("answer %q", got)
		}
		c.Close()
	}
	if e.cp.serverFirst.Load() {
		t.Error("an HTTP port was taken for a server-first one")
	}
}

// Mirrors in flight are bounded in number and bytes; past a bound a copy
// is dropped, and room comes back as copies finish.
func TestMirrorsAreBounded(t *testing.T) {
	h := &httpMode{}
	if !h.takeMirrors(maxMirrors, 0) {
		t.Fatal("no room for the first mirrors")
	}
	if h.takeMirrors(1, 0) {
		t.Error("a mirror past maxMirrors was taken")
	}
	h.giveMirror(0)
	if !h.takeMirrors(1, 0) {
		t.Error("no room after one finished")
	}
	h = &httpMode{}
	if h.takeMirrors(17, maxMirrorBody) {
		t.Error("17 MiB of mirrored bodies were taken, past maxMirrorBytes")
	}
}
