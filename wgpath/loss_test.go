package wgpath

import (
	"strings"
	"testing"
	"time"
)

func TestLossMeter(t *testing.T) {
	var m lossMeter
	start := time.Unix(1000, 0)
	for seq := uint32(1); seq <= 300; seq++ {
		m.sent(seq, start.Add(time.Duration(seq)*lossProbes))
		if seq%50 != 0 { // every 50th is lost
			m.answered(seq)
		}
	}
	m.answered(12345) // an answer to no probe of the window changes nothing
	// At the last probe's time, those of the last second are not judged
	// yet; the window is the 200 before them (91 to 290 of the 300:
	// 100, 150, 200 and 250 lost).
	lost, judged := m.count(start.Add(300 * lossProbes))
	if judged != lossWindow || lost != 4 {
		t.Fatalf("%d lost of %d judged, want 4 of %d", lost, judged, lossWindow)
	}
	// All answered from here on: a whole window comes back.
	for seq := uint32(301); seq <= 600; seq++ {
		m.sent(seq, start.Add(time.Duration(seq)*lossProbes))
		m.answered(seq)
	}
	if lost, judged := m.count(start.Add(600 * lossProbes)); lost != 0 || judged != lossWindow {
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
		{false, 5, 50, false},  // too few judged yet
		{false, 2, 100, false}, // two stray losses are no verdict
		{false, 3, 150, true},  // 2%
		{false, 2, 200, false}, // 1%: not more than, and too few
		{false, 12, 200, true}, // 6%: 3% each way
		{true, 1, 200, true},   // not a whole window back yet
		{true, 0, 150, true},   // not a whole window judged
		{true, 0, 200, false},  // well again
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
