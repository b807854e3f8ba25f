// Package gometrics is the Go runtime's series every tunnel process
// serves: client_golang's usual ones, and the live heap as the last
// garbage collection measured it (go_gc_heap_live_bytes), which, unlike
// RSS, does not move with when the collector last ran or with how much of
// a preallocated buffer has been touched: the figure a leak grows.
package gometrics

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Collector returns the Go runtime's collector with the live heap added.
func Collector() prometheus.Collector {
	return collectors.NewGoCollector(
		collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}),
	)
}
