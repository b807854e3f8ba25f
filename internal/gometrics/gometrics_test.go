package gometrics

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestLiveHeapIsServed(t *testing.T) {
	runtime.GC() // the figure is the last collection's
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]float64{}
	for _, mf := range mfs {
		if m := mf.GetMetric(); len(m) == 1 && m[0].GetGauge() != nil {
			names[mf.GetName()] = m[0].GetGauge().GetValue()
		}
	}
	if names["go_gc_heap_live_bytes"] <= 0 || names["go_goroutines"] <= 0 {
		t.Errorf("live heap %v, goroutines %v: want both", names["go_gc_heap_live_bytes"], names["go_goroutines"])
	}
}
