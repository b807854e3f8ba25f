package manager

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestStaticSourceWakesEveryWaiter(t *testing.T) {
	src := NewStaticSource(testCluster())
	var wg sync.WaitGroup
	ready := make(chan struct{}, 10)
	for range 10 {
		wg.Go(func() {
			ch := src.Changed()
			ready <- struct{}{}
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Error("a waiter was not woken")
			}
		})
	}
	for range 10 {
		<-ready
	}
	c := testCluster()
	c.Namespaces = nil
	src.Set(c)
	wg.Wait()
	if got := src.Current(); !got.Equal(c) {
		t.Errorf("Current %v after Set(%v)", got, c)
	}
}

func TestStaticSourceSetSameIsQuiet(t *testing.T) {
	src := NewStaticSource(testCluster())
	ch := src.Changed()
	src.Set(testCluster())
	select {
	case <-ch:
		t.Error("an unchanged Set woke the waiters")
	default:
	}
	// A fresh channel after a change.
	c := testCluster()
	c.PodSubnets = nil
	src.Set(c)
	<-ch
	select {
	case <-src.Changed():
		t.Error("the channel after a change is already closed")
	default:
	}
}

func TestClusterEqual(t *testing.T) {
	a := testCluster()
	b := testCluster()
	if !a.Equal(b) {
		t.Error("equal clusters differ")
	}
	b.ServiceSubnets = append(b.ServiceSubnets, netip.MustParsePrefix("fd00::/108"))
	if a.Equal(b) {
		t.Error("different service subnets are equal")
	}
	if !(Cluster{}).Equal(Cluster{Namespaces: []string{}}) {
		t.Error("nil and empty differ")
	}
}
