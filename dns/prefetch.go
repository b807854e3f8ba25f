package dns

import (
	"context"
	"sync"
)

// maxPrefetches bounds the refreshes in flight: past it a due answer is
// still served, and refreshed by a later hit or asked again once it
// expires.
const maxPrefetches = 32

// prefetches are the refreshes in flight. They have a lock of their own:
// a hit takes it, and the resolver's lock is read on every query.
type prefetches struct {
	mu       sync.Mutex // guards following
	inFlight map[cacheKey]bool
	closed   bool
	wg       sync.WaitGroup // Add only under mu while !closed
}

// prefetch asks the cluster about key again in the background, once at a
// time per key, so that a name in use keeps a fresh answer in the cache
// and its clients do not wait for the cluster while it answers.
func (r *Resolver) prefetch(key cacheKey, req request) {
	p := &r.prefetches
	p.mu.Lock()
	if p.closed || p.inFlight[key] || len(p.inFlight) >= maxPrefetches {
		p.mu.Unlock()
		return
	}
	p.inFlight[key] = true
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(r.ctx, queryTimeout)
		defer cancel()
		if _, err := r.ask(ctx, key, req); err != nil {
			r.logger.Debug("refresh a cached answer", "name", key.name, "err", err)
		}
		p.mu.Lock()
		delete(p.inFlight, key)
		p.mu.Unlock()
	}()
}

// len is how many refreshes are under way.
func (p *prefetches) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inFlight)
}

// close stops new refreshes and waits for those under way.
func (p *prefetches) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.wg.Wait()
}
