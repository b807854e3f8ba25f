package netstack

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestConfigDefaults(t *testing.T) {
	const buf = 8 << 20
	defaults := Config{MTU: 1500, MaxInflightDials: 1024, UDPIdleTimeout: time.Minute, DialTimeout: 10 * time.Second, MaxReceiveBuffer: buf, MaxSendBuffer: buf}
	for _, tc := range []struct {
		name    string
		cfg     Config
		devMTU  int
		want    Config
		wantErr bool
	}{
		{name: "zero", want: defaults},
		{name: "device MTU", devMTU: 1420, want: Config{MTU: 1420, MaxInflightDials: 1024, UDPIdleTimeout: time.Minute, DialTimeout: 10 * time.Second, MaxReceiveBuffer: buf, MaxSendBuffer: buf}},
		{name: "config wins", cfg: Config{MTU: 9000}, devMTU: 1420, want: Config{MTU: 9000, MaxInflightDials: 1024, UDPIdleTimeout: time.Minute, DialTimeout: 10 * time.Second, MaxReceiveBuffer: buf, MaxSendBuffer: buf}},
		{name: "all set", cfg: Config{MTU: 1280, MaxInflightDials: 3, UDPIdleTimeout: time.Second, DialTimeout: 2 * time.Second, MaxReceiveBuffer: 1 << 20, MaxSendBuffer: 4 << 20},
			want: Config{MTU: 1280, MaxInflightDials: 3, UDPIdleTimeout: time.Second, DialTimeout: 2 * time.Second, MaxReceiveBuffer: 1 << 20, MaxSendBuffer: 4 << 20}},
		{name: "negative means default", cfg: Config{MaxInflightDials: -1, UDPIdleTimeout: -1, DialTimeout: -1, MaxReceiveBuffer: -1, MaxSendBuffer: -1}, want: defaults},
		{name: "MTU too small for IPv6", cfg: Config{MTU: 576}, wantErr: true},
		{name: "MTU too large", cfg: Config{MTU: 70000}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.withDefaults(tc.devMTU)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLogLimiter(5*time.Second, func() time.Time { return now })
	step := func(d time.Duration) { now = now.Add(d) }
	for i, tc := range []struct {
		advance time.Duration
		key     string
		want    bool
	}{
		{0, "a", true},
		{0, "a", false},
		{time.Second, "b", true}, // keys are independent
		{3 * time.Second, "a", false},
		{time.Second, "a", true}, // 5s after the first
		{time.Second, "b", true},
		{time.Second, "a", false},
	} {
		step(tc.advance)
		if got := l.allow(tc.key); got != tc.want {
			t.Errorf("step %d: allow(%q) = %v, want %v", i, tc.key, got, tc.want)
		}
	}
}

// A flood of distinct keys neither grows the limiter without bound nor
// silences it for good.
func TestLogLimiterBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLogLimiter(time.Second, func() time.Time { return now })
	for i := range 2 * maxLimiterKeys {
		l.allow(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80).String())
	}
	if n := len(l.last); n > maxLimiterKeys {
		t.Errorf("%d keys kept, want at most %d", n, maxLimiterKeys)
	}
	now = now.Add(2 * time.Second)
	if !l.allow("new") {
		t.Error("a new key is silenced after the flood passed")
	}
}

func TestNewRejectsBadMTU(t *testing.T) {
	dev := newChanDevice(1500, 1)
	defer dev.Close()
	_, err := New(slog.New(slog.DiscardHandler), dev, &fakeDialer{}, Config{MTU: 100})
	if err == nil {
		t.Fatal("New accepted an MTU of 100")
	}
}

// Close resets the connections the stack forwards, fails pending dials
// (the client's connect is refused), closes listeners and UDP flows, and
// leaves no goroutine behind once the device is closed too.
func TestCloseEndsEverything(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after every other cleanup

	held := netip.MustParseAddrPort("10.96.0.99:80")
	d := &fakeDialer{tcp: serveTCP(t, echo), udp: serveUDPEcho(t), hold: make(chan struct{}), holdOnly: held}
	h := newHarness(t, Config{}, d)

	conn, err := h.client.dialTCP(timeout(t, 10*time.Second), svcV4)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	udpDst := netip.MustParseAddrPort("10.96.0.10:53")
	uconn := h.client.dialUDP(t, udpDst)
	defer uconn.Close()
	if err := roundTrip(uconn, udpDst, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	ln, err := h.stack.Listen(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := h.stack.ListenPacket(dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	accepted, read := make(chan error, 1), make(chan error, 1)
	go func() { _, err := ln.Accept(); accepted <- err }()
	go func() { _, _, err := pc.ReadFrom(make([]byte, 10)); read <- err }()
	dialed := make(chan error, 1)
	go func() {
		c, err := h.client.dialTCP(context.Background(), held)
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	eventually(t, "the held dial", func() bool { n, _, _ := d.state(); return n == 1 })
	if st := h.stack.Stats(); st.TCPActive != 1 || st.UDPActive != 1 {
		t.Fatalf("stats %+v, want one TCP and one UDP flow", st)
	}

	if err := h.stack.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := h.stack.Close(); err == nil {
		t.Error("second Close succeeded")
	}
	if err := <-dialed; err == nil {
		t.Error("connect while closing succeeded")
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || err == io.EOF || isTimeout(err) {
		t.Errorf("read after Close: %v, want a reset", err)
	}
	if err := <-accepted; err == nil {
		t.Error("Accept succeeded after Close")
	}
	if err := <-read; err == nil {
		t.Error("ReadFrom succeeded after Close")
	}
	if st := h.stack.Stats(); st.TCPActive != 0 || st.UDPActive != 0 {
		t.Errorf("stats %+v, want no active flow", st)
	}
	if _, err := h.stack.Listen(dnsAddr); err == nil {
		t.Error("Listen succeeded after Close")
	}
	if _, err := h.stack.ListenPacket(dnsAddr); err == nil {
		t.Error("ListenPacket succeeded after Close")
	}
	h.close()
}

// The device closing under the stack stops it reading; Close still works.
func TestDeviceClosedFirst(t *testing.T) {
	d := &fakeDialer{tcp: serveTCP(t, echo)}
	h := newHarness(t, Config{}, d)
	h.dev.Close()
	if err := h.stack.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if h.logs.count("level=ERROR") != 0 {
		t.Errorf("a closed device was logged as an error:\n%s", h.logs)
	}
}
