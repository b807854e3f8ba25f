package netstack

import (
	"sync"
	"time"
)

// logEvery is how often the packet path may log one kind of event (one
// destination's failed dials, say).
const logEvery = 5 * time.Second

// maxLimiterKeys bounds the limiter's memory under a scan of many
// destinations; past it, keys that may log again are forgotten.
const maxLimiterKeys = 4096

// logLimiter says whether an event with a given key may be logged now.
type logLimiter struct {
	every time.Duration
	now   func() time.Time

	mu     sync.Mutex // guards following
	last   map[string]time.Time
	pruned time.Time
}

func newLogLimiter(every time.Duration, now func() time.Time) *logLimiter {
	return &logLimiter{every: every, now: now, last: map[string]time.Time{}}
}

// allow reports whether key may log now, and if so notes that it did.
func (l *logLimiter) allow(key string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= maxLimiterKeys && now.Sub(l.pruned) >= l.every {
		l.pruneLocked(now)
	}
	if len(l.last) >= maxLimiterKeys {
		return false // a flood of distinct keys: stay quiet until it passes
	}
	l.last[key] = now
	return true
}

// pruneLocked forgets keys that may log again; at most once per interval,
// so a flood does not make every call walk the map.
func (l *logLimiter) pruneLocked(now time.Time) {
	l.pruned = now
	for k, t := range l.last {
		if now.Sub(t) >= l.every {
			delete(l.last, k)
		}
	}
}

// logLimited logs a warning at most once per logEvery for key.
func (s *Stack) logLimited(key, msg string, args ...any) {
	if s.limiter.allow(key) {
		s.log.Warn(msg, args...)
	}
}
