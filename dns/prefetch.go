package dns

import "context"

// maxPrefetches bounds the refreshes in flight: past it a due answer is
// still served, and refreshed by a later hit or asked again once it
// expires.
const maxPrefetches = 32

// prefetch asks the cluster about key again in the background, once at a
// time per key, so that a name in use keeps a fresh answer in the cache
// and its clients never wait for the cluster.
func (r *Resolver) prefetch(key cacheKey, req request) {
	r.mu.Lock()
	if r.closed || r.prefetching[key] || len(r.prefetching) >= maxPrefetches {
		r.mu.Unlock()
		return
	}
	r.prefetching[key] = true
	r.prefetches.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.prefetches.Done()
		ctx, cancel := context.WithTimeout(r.ctx, queryTimeout)
		defer cancel()
		if _, err := r.ask(ctx, key, req); err != nil {
			r.logger.Debug("refresh a cached answer", "name", key.name, "err", err)
		}
		r.mu.Lock()
		delete(r.prefetching, key)
		r.mu.Unlock()
	}()
}
