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
	// At the last probe's time, those of the last second are not judged yet.
	lost, judged := m.count(start.Add(300 * lossProbes))
	if judged != lossWindow-5 || lost != 3 {
		t.Fatalf("%d lost of %d judged, want 3 of %d", lost, judged, lossWindow-5)
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
		{false, 1, 100, false}, // one stray loss is no verdict
		{false, 2, 150, true},  // 1.3%
		{false, 2, 200, false}, // 1%: not more than
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
