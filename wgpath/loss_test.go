package wgpath

import (
	"strings"
	"testing"
	"time"
)

func TestLossMeter(t *testing.T) {
	var m lossMeter
	start := time.Unix(1000, 0)
	const n = uint32(lossRing + 100)
	for seq := uint32(1); seq <= n; seq++ {
		m.sent(seq, start.Add(time.Duration(seq)*lossProbes))
		if seq%50 != 0 { // every 50th is lost
			m.answered(seq)
		}
	}
	m.answered(12345) // an answer to no probe of the window changes nothing
	// At the last probe's time, those of the last second are not judged
	// yet; the window is the lossWindow before them.
	newest := n - uint32(lossWait/lossProbes)
	want := 0
	for seq := newest - lossWindow + 1; seq <= newest; seq++ {
		if seq%50 == 0 {
			want++
		}
	}
	lost, judged := m.count(start.Add(time.Duration(n) * lossProbes))
	if judged != lossWindow || lost != want {
		t.Fatalf("%d lost of %d judged, want %d of %d", lost, judged, want, lossWindow)
	}
	// All answered from here on: a whole window comes back.
	for seq := n + 1; seq <= 3*n; seq++ {
		m.sent(seq, start.Add(time.Duration(seq)*lossProbes))
		m.answered(seq)
	}
	if lost, judged := m.count(start.Add(time.Duration(3*n) * lossProbes)); lost != 0 || judged != lossWindow {
		t.Fatalf("after a clean window: %d lost of %d judged", lost, judged)
	}
	m.reset()
	if lost, judged := m.count(start.Add(time.Hour)); lost != 0 || judged != 0 {
		t.Fatalf("after reset: %d of %d", lost, judged)
	}
}

func TestLossVerdict(t *testing.T) {
	for _, tc := range []struct {
		was          bool
		lost, judged int
		lossy        bool
	}{
		{false, 0, 0, false},
		{false, 5, 50, false},        // too few judged yet
		{false, 2, 100, false},       // two stray losses are no verdict
		{false, 3, 150, true},        // 2%
		{false, 2, 200, false},       // 1%: not more than, and too few
		{false, 12, 200, true},       // 6%: 3% each way
		{true, 1, lossWindow, true},  // not a whole window back yet
		{true, 0, 150, true},         // not a whole window judged
		{true, 0, lossWindow, false}, // well again
	} {
		got, why := lossVerdict(tc.was, tc.lost, tc.judged)
		if got != tc.lossy {
			t.Errorf("was %v, %d lost of %d: lossy %v, want %v", tc.was, tc.lost, tc.judged, got, tc.lossy)
		}
		if tc.judged > 0 && !strings.Contains(why, "probes") {
			t.Errorf("why: %q", why)
		}
	}
}
