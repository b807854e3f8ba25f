package report

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"tunnel.dev/tunnel/canary"
)

// The page's colours: the canary warm, the stable cool, bounds grey.
var (
	canaryColor = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	stableColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	boundColor  = color.RGBA{R: 0x70, G: 0x70, B: 0x70, A: 0xff}
	stepColor   = color.RGBA{R: 0xbb, G: 0xbb, B: 0xbb, A: 0xff}
)

// chart is one drawing: lines over the canary's time, with its step
// changes as dashed verticals.
type chart struct {
	title, unit string
	scale       float64 // each value times this (100 for a percentage)
	floor       float64 // the least top of the Y axis, so a flat 0 reads as 0
	lines       []Series
	colors      []color.Color
	dashed      []bool
}

// svg draws c as an inline SVG element.
func (c chart) svg(d *Data) (template.HTML, error) {
	p := plot.New()
	p.Title.Text = c.title
	p.Y.Label.Text = c.unit
	p.X.Tick.Marker = plot.TimeTicks{Format: "15:04:05", Time: plot.UnixTimeIn(time.Local)}
	p.X.Min, p.X.Max = unix(d.From), unix(d.To)
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	top := 0.0
	for i, s := range c.lines {
		if len(s.Points) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.Points))
		for j, pt := range s.Points {
			xys[j].X, xys[j].Y = unix(pt.At), pt.Value*c.scale
			top = max(top, xys[j].Y)
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return "", err
		}
		l.Color, l.Width = c.colors[i], vg.Points(1.5)
		if c.dashed[i] {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(s.Name, l)
	}
	p.Y.Max = max(top*1.1, c.floor, 1e-9)
	for _, rec := range d.State.Steps {
		x := unix(rec.Started)
		v, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: p.Y.Max}})
		if err != nil {
			return "", err
		}
		v.Color, v.Dashes = stepColor, []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(v)
	}
	canvas := vgsvg.New(22*vg.Centimeter, 7*vg.Centimeter)
	p.Draw(draw.New(canvas))
	var b bytes.Buffer
	if _, err := canvas.WriteTo(&b); err != nil {
		return "", err
	}
	// The document's own header is not allowed inside HTML.
	svg := b.String()
	if i := strings.Index(svg, "<svg"); i > 0 {
		svg = svg[i:]
	}
	return template.HTML(svg), nil // gonum's own SVG, with text it escaped
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// shareSeries is the canary's share of traffic through its steps, as a
// step line from the record.
func shareSeries(d *Data) Series {
	s := Series{Name: "canary's weight"}
	for _, rec := range d.State.Steps {
		end := d.To
		if rec.Ended != nil {
			end = *rec.Ended
		}
		s.Points = append(s.Points, Point{At: rec.Started, Value: float64(rec.Weight)}, Point{At: end, Value: float64(rec.Weight)})
	}
	return s
}

// charts are the page's drawings, in order.
func charts(d *Data) []chart {
	share := "Canary's share of traffic"
	if m, _ := canary.ParseMatch(d.State.Spec.Match); m != nil {
		share += ", and " + m.Describe() + " at every step"
	}
	out := []chart{
		{title: share, unit: "%", scale: 1, floor: 100, lines: []Series{shareSeries(d)}, colors: []color.Color{canaryColor}, dashed: []bool{false}},
		{title: "Error rate (5xx)", unit: "%", scale: 100, floor: 1, lines: d.Errors, colors: []color.Color{canaryColor, stableColor}, dashed: []bool{false, false}},
		{title: "p99 latency", unit: "ms", scale: 1000, floor: 1, lines: d.P99, colors: []color.Color{canaryColor, stableColor}, dashed: []bool{false, false}},
	}
	for i, c := range d.State.Spec.Custom {
		if d.Custom[i] == nil {
			continue
		}
		out = append(out, chart{title: fmt.Sprintf("Check %s", c.Name), scale: 1, lines: d.Custom[i],
			colors: []color.Color{canaryColor, boundColor}, dashed: []bool{false, true}})
	}
	return out
}
