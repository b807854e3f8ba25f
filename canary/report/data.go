// Package report draws a canary as one self-contained HTML page: each
// step's share, canary against stable error rate and p99 over time from
// Prometheus' ranges, every check with its value, and the verdict. The
// charts are inline SVG (gonum/plot), so the page opens offline.
package report

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/common/model"

	"tunnel.dev/tunnel/canary"
)

// Series is one line of a chart: a value at each time.
type Series struct {
	Name   string
	Points []Point
}

// Point is one value of a series.
type Point struct {
	At    time.Time
	Value float64
}

// Data is everything the page shows.
type Data struct {
	State *canary.State
	From  time.Time
	To    time.Time
	// Errors and P99 hold a canary and a stable series each; Custom one
	// pair (the query's value and its bound) per check.
	Errors, P99 []Series
	Custom      [][]Series
	// Missing says which charts Prometheus could not fill, and why.
	Missing []string
}

// maxPoints bounds a range query, whatever the canary's length.
const maxPoints = 300

// Gather reads the canary's ranges from the Prometheus its record names.
// Prometheus away or short of data leaves charts empty, named in Missing:
// the record alone still makes a page.
func Gather(ctx context.Context, st *canary.State, now time.Time) (*Data, error) {
	d := &Data{State: st, From: st.Started, To: now}
	if st.Phase.Done() {
		d.To = st.Updated
	}
	if !d.To.After(d.From) {
		d.To = d.From.Add(time.Second)
	}
	dialect, ok := canary.Dialects[st.Spec.Metrics]
	if !ok {
		return nil, fmt.Errorf("the canary's record names unknown metrics %q", st.Spec.Metrics)
	}
	prom, err := canary.NewPrometheus(st.Spec.Prometheus, dialect)
	if err != nil {
		return nil, err
	}
	window := model.Duration(time.Duration(st.Spec.Interval)).String()
	step := max(time.Second, d.To.Sub(d.From)/maxPoints)
	ask := func(name, q string) Series {
		points, err := prom.Range(ctx, q, d.From, d.To, step)
		if err != nil {
			d.Missing = append(d.Missing, fmt.Sprintf("%s: %v", name, err))
		}
		s := Series{Name: name}
		for _, pt := range points {
			s.Points = append(s.Points, Point{At: pt.Timestamp.Time(), Value: float64(pt.Value)})
		}
		return s
	}
	for _, b := range []struct{ name, service string }{{"canary", st.Canary}, {"stable", st.Spec.Service}} {
		sel := dialect.Selector(st.Namespace, b.service, st.Port)
		// No 5xx series at all is a rate of 0, where there were requests.
		errs := fmt.Sprintf("(%s or vector(0)) / (%s)", fmt.Sprintf(dialect.Errors, sel, window), fmt.Sprintf(dialect.Requests, sel, window))
		d.Errors = append(d.Errors, ask(b.name, errs))
		d.P99 = append(d.P99, ask(b.name, fmt.Sprintf(dialect.P99, sel, window)))
	}
	for _, ch := range st.Spec.Custom {
		comp, err := ch.Compile(canary.VarsOf(st, dialect))
		if err != nil {
			d.Missing = append(d.Missing, fmt.Sprintf("check %s: %v", ch.Name, err))
			d.Custom = append(d.Custom, nil)
			continue
		}
		d.Custom = append(d.Custom, []Series{ask(ch.Name, comp.LHS), ask(comp.Op+" bound", comp.RHS)})
	}
	return d, nil
}
