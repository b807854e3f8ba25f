package manager

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"tunnel.dev/tunnel/rpc"
)

func TestForbidden(t *testing.T) {
	for _, tc := range []struct {
		addr         string
		forbidden    bool // in production
		withLoopback bool // with AllowLoopback
	}{
		{"10.96.0.10", false, false},
		{"10.244.1.7", false, false},
		{"192.168.1.1", false, false},
		{"fd00:10:96::a", false, false},
		{"2001:db8::1", false, false},
		{"127.0.0.1", true, false},
		{"127.1.2.3", true, false},
		{"::1", true, false},
		{"::ffff:127.0.0.1", true, false},
		{"169.254.169.254", true, true}, // cloud metadata
		{"::ffff:169.254.169.254", true, true},
		{"fe80::a9fe:a9fe", true, true},
		{"fd00:ec2::254", true, true}, // AWS metadata over IPv6
		{"100.100.100.200", true, true},
		{"0.0.0.0", true, true},
		{"0.1.2.3", true, true},
		{"::", true, true},
		{"224.0.0.251", true, true},
		{"239.255.255.250", true, true},
		{"255.255.255.255", true, true},
		{"ff02::fb", true, true},
		{"ff01::1", true, true},
		{"64:ff9b::a9fe:a9fe", true, true}, // NAT64 of 169.254.169.254
		{"64:ff9b::7f00:1", true, false},   // NAT64 of 127.0.0.1
		{"64:ff9b::a60:a", false, false},   // NAT64 of 10.96.0.10
	} {
		a := netip.MustParseAddr(tc.addr)
		if got := forbidden(a, false); got != tc.forbidden {
			t.Errorf("forbidden(%s) = %v, want %v", a, got, tc.forbidden)
		}
		if got := forbidden(a, true); got != tc.withLoopback {
			t.Errorf("forbidden(%s) with loopback allowed = %v, want %v", a, got, tc.withLoopback)
		}
	}
	if !forbidden(netip.Addr{}, true) {
		t.Error("the zero address is allowed")
	}
}

func TestDialStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want rpc.Status
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, rpc.StatusRefused},
		{fmt.Errorf("wrapped: %w", syscall.ECONNREFUSED), rpc.StatusRefused},
		{&net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, rpc.StatusUnreachable},
		{os.NewSyscallError("connect", syscall.EHOSTUNREACH), rpc.StatusUnreachable},
		{os.NewSyscallError("connect", syscall.ENETUNREACH), rpc.StatusUnreachable},
		{errors.New("anything else"), rpc.StatusUnreachable},
	} {
		if got := dialStatus(tc.err); got != tc.want {
			t.Errorf("dialStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestStatusLabels(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range []rpc.Status{rpc.StatusOK, rpc.StatusRefused, rpc.StatusUnreachable, rpc.StatusForbidden, 99} {
		l := statusLabel(s)
		if seen[l] {
			t.Errorf("label %q used twice", l)
		}
		seen[l] = true
	}
}

// While the API server cannot answer, the last answer holds for a while
// (nobody can change RBAC then either); past that, and for a new
// question, the error stands.
func TestAccessCacheKeepsAnswersThroughAnOutage(t *testing.T) {
	c := &accessCache{ttl: 10 * time.Second, stale: 10 * time.Minute, max: 10}
	key := accessKey{user: "dev", ns: "shop", verb: "create"}
	t0 := time.Unix(1000, 0)
	yes := func() (bool, error) { return true, nil }
	down := func() (bool, error) { return false, errors.New("connect: connection refused") }
	if ok, err := c.allowed(key, t0, yes); !ok || err != nil {
		t.Fatalf("first answer: %v %v", ok, err)
	}
	if ok, err := c.allowed(key, t0.Add(time.Minute), down); !ok || err != nil {
		t.Errorf("during an outage: %v %v, want the last answer", ok, err)
	}
	if ok, err := c.allowed(key, t0.Add(11*time.Minute), down); ok || err == nil {
		t.Errorf("an answer older than the stale bound: %v %v", ok, err)
	}
	if ok, err := c.allowed(accessKey{user: "dev", ns: "other", verb: "create"}, t0.Add(time.Minute), down); ok || err == nil {
		t.Errorf("a question never answered: %v %v", ok, err)
	}
}
