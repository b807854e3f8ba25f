package wgpath

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

// TestSplitLossyKeepsFlowsAndCloseResetsThem: while the path is lossy new
// connections stay off it and those on it go on; when the path then
// closes, its connections are forgotten (their next packets reach the
// stack, which resets them), lossy or not.
func TestSplitLossyKeepsFlowsAndCloseResetsThem(t *testing.T) {
	s := NewSplit(slog.New(slog.DiscardHandler), nil, nil)
	w := newWGEnd(s, MTU, nil)
	s.attach(w)
	w.setAddrs(netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("fd74:756e:6e65:6c00::2"))
	w.open.Store(true)
	now := time.Now()
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	first := netip.MustParseAddrPort("10.210.0.2:40000")
	second := netip.MustParseAddrPort("10.210.0.2:40001")

	if !s.divert(w, tcp4(first, svc, tcpSYN, nil), now) {
		t.Fatal("a new connection on an open path stayed off it")
	}
	w.lossy.Store(true)
	if s.divert(w, tcp4(second, svc, tcpSYN, nil), now) {
		t.Error("a new connection took a lossy path")
	}
	if !s.divert(w, tcp4(first, svc, tcpACK, []byte("more")), now) {
		t.Error("a connection on the path left it when the path turned lossy")
	}
	s.close(w)
	if s.Flows() != 0 || s.divert(w, tcp4(first, svc, tcpACK, []byte("more")), now) {
		t.Errorf("after the lossy path closed: %d flows left, its connection still diverted", s.Flows())
	}
}
