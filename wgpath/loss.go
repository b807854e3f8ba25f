package wgpath

import (
	"fmt"
	"sync"
	"time"
)

// A lossy link costs the WireGuard path more than the port-forward: a
// connection over WireGuard is the laptop's own TCP end to end, whose lost
// SYN waits a second, and the manager's userspace TCP (Reno) halves its
// window at every loss, where the port-forward's TCP to the API server is
// the kernel's (CUBIC or BBR) and the laptop's handshakes never leave it.
// Measured with `lab shape` at a 20 ms round trip and 1% loss each way:
// 2.7 MB/s over WireGuard against 55 MB/s over the port-forward, and a
// p99 of 1 s against 0.3 s. So the laptop counts its probes' answers, ten
// a second (80 bytes each way), and while more than 1% of them are lost
// new connections take the port-forward; once a whole window of them
// comes back, WireGuard again. Connections keep the path they started on.
// At 1% loss each way (2% of the probes) three verdicts in four come
// within 20 s.
const (
	lossWindow   = 300              // probes judged: the last 30 s
	lossWait     = time.Second      // a probe without an answer by then is lost
	lossMinJudge = 100              // probes judged before the first verdict
	lossMinLost  = 3                // and lost, so a stray loss or two is no verdict
	lossyPercent = 1.0              // lost more than this: the port-forward
	lossProbes   = time.Second / 10 // probes while the path is up

	// lossRing holds the judged window and the probes still waiting.
	lossRing = lossWindow + int(lossWait/lossProbes) + 1
)

// lossMeter keeps the fate of the last probes.
type lossMeter struct {
	mu   sync.Mutex
	ring [lossRing]probeRecord
}

type probeRecord struct {
	seq      uint32
	sent     time.Time
	answered bool
}

func (m *lossMeter) sent(seq uint32, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ring[seq%uint32(lossRing)] = probeRecord{seq: seq, sent: now}
}

func (m *lossMeter) answered(seq uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := &m.ring[seq%uint32(lossRing)]; r.seq == seq && !r.sent.IsZero() {
		r.answered = true
	}
}

// count says how many of the last lossWindow probes old enough to judge
// were lost.
func (m *lossMeter) count(now time.Time) (lost, judged int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var newest uint32
	for _, r := range m.ring {
		if !r.sent.IsZero() && now.Sub(r.sent) >= lossWait && r.seq-newest < 1<<31 {
			newest = r.seq
		}
	}
	for _, r := range m.ring {
		if r.sent.IsZero() || now.Sub(r.sent) < lossWait || newest-r.seq >= lossWindow {
			continue
		}
		judged++
		if !r.answered {
			lost++
		}
	}
	return lost, judged
}

func (m *lossMeter) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ring = [lossRing]probeRecord{}
}

// lossVerdict says whether the path is lossy now, given whether it was:
// lossy past lossyPercent (lossMinLost at least), and well again only
// once a whole window came back.
func lossVerdict(wasLossy bool, lost, judged int) (lossy bool, why string) {
	if judged == 0 {
		return wasLossy, ""
	}
	pct := 100 * float64(lost) / float64(judged)
	why = fmt.Sprintf("WireGuard lost %d of the last %d probes (%.1f%%), more than the %.0f%% the port-forward's TCP takes better",
		lost, judged, pct, lossyPercent)
	if wasLossy {
		return !(judged >= lossWindow && lost == 0), why
	}
	return judged >= lossMinJudge && lost >= lossMinLost && pct > lossyPercent, why
}
