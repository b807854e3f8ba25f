package manager

import (
	"net/netip"
	"slices"
	"sync"
)

// ClusterSource tells what the laptop must route and resolve, and signals
// changes.
type ClusterSource interface {
	// Current returns the cluster as known now.
	Current() Cluster
	// Changed returns a channel that is closed at the next change. Call it
	// before Current so that a change between the two is never missed; any
	// number of goroutines may wait on it.
	Changed() <-chan struct{}
}

// Cluster is what a laptop routes (subnets) and which names it resolves
// through the cluster (namespaces). Slices are sorted.
type Cluster struct {
	ServiceSubnets []netip.Prefix
	PodSubnets     []netip.Prefix
	Namespaces     []string
}

// Equal reports whether c and o hold the same values.
func (c Cluster) Equal(o Cluster) bool {
	return slices.Equal(c.ServiceSubnets, o.ServiceSubnets) &&
		slices.Equal(c.PodSubnets, o.PodSubnets) &&
		slices.Equal(c.Namespaces, o.Namespaces)
}

// broadcast is a change signal: wait returns a channel that the next notify closes;
// notify then starts a fresh one. The zero value is ready.
type broadcast struct {
	mu sync.Mutex // guards following
	ch chan struct{}
}

func (s *broadcast) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *broadcast) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// StaticSource is a ClusterSource whose value is set by its owner: for a
// manager outside Kubernetes (tests, the lab) or a fixed configuration.
type StaticSource struct {
	changed broadcast

	mu sync.Mutex // guards following
	c  Cluster
}

// NewStaticSource returns a source holding c.
func NewStaticSource(c Cluster) *StaticSource {
	return &StaticSource{c: c}
}

// Current implements ClusterSource.
func (s *StaticSource) Current() Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}

// Changed implements ClusterSource.
func (s *StaticSource) Changed() <-chan struct{} { return s.changed.wait() }

// Set replaces the cluster and wakes the waiters if it differs.
func (s *StaticSource) Set(c Cluster) {
	s.mu.Lock()
	same := s.c.Equal(c)
	s.c = c
	s.mu.Unlock()
	if !same {
		s.changed.notify()
	}
}
