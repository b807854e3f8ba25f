package report

import (
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"tunnel.dev/tunnel/canary"
)

// Write renders the page.
func Write(w io.Writer, d *Data) error {
	var figs []template.HTML
	for _, c := range charts(d) {
		svg, err := c.svg(d)
		if err != nil {
			return fmt.Errorf("draw %s: %w", c.title, err)
		}
		figs = append(figs, svg)
	}
	st := d.State
	m, _ := canary.ParseMatch(st.Spec.Match) // nil for none: the record was checked when read
	var steps []stepRow
	for _, r := range st.Steps {
		row := stepRow{N: r.Step + 1, Share: canary.DescribeSplit(canary.Split{Weight: r.Weight, Match: m}), Started: r.Started.Local().Format(time.TimeOnly), Verdict: r.Verdict}
		if r.Ended != nil {
			row.Ended = r.Ended.Local().Format(time.TimeOnly)
			row.Took = r.Ended.Sub(r.Started).Round(time.Second).String()
		}
		steps = append(steps, row)
	}
	return page.Execute(w, struct {
		*Data
		Verdict, Class string
		Charts         []template.HTML
		Steps          []stepRow
		Generated      string
	}{d, verdict(st), strings.ToLower(string(st.Phase)), figs, steps, time.Now().Local().Format(time.DateTime)})
}

type stepRow struct {
	N                           int
	Share, Started, Ended, Took string
	Verdict                     string
}

func verdict(st *canary.State) string {
	switch {
	case st.Phase == canary.Promoted:
		return fmt.Sprintf("Promoted: %s runs %s (%s)", st.Stable, st.Spec.Image, st.Reason)
	case st.Phase.Done():
		return fmt.Sprintf("%s: %s", st.Phase, st.Reason)
	}
	return fmt.Sprintf("%s, at step %d of %d (the page is of %s)", st.Phase, st.Step+1, len(st.Spec.Steps), time.Now().Local().Format(time.TimeOnly))
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"time": func(t time.Time) string { return t.Local().Format(time.TimeOnly) },
	"pct": func(f float64) string {
		return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.2f", f*100), "0"), ".0") + "%"
	},
	"ms":   func(d canary.Duration) string { return time.Duration(d).Round(time.Millisecond).String() },
	"next": func(i int) int { return i + 1 },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Canary of {{.State.Spec.Service}}: {{.State.Phase}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
.verdict { padding: .6em 1em; border-radius: 4px; font-weight: 600; }
.promoted { background: #e3f4e1; } .rolledback, .aborted { background: #fbe3e3; } .progressing, .starting, .promoting, .rollingback, .aborting { background: #fff5d6; }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; } dt { color: #666; } dd { margin: 0; }
figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
.missing { color: #a33; }
</style></head>
<body>
<h1>Canary of {{.State.Spec.Service}} in namespace {{.State.Namespace}}</h1>
<p class="verdict {{.Class}}">{{.Verdict}}</p>
<dl>
<dt>Image</dt><dd>{{.State.Spec.Image}}</dd>
<dt>Stable</dt><dd>{{.State.StableImage}}, in deployment {{.State.Stable}}</dd>
<dt>Route</dt><dd>{{.State.Route}}</dd>
{{- if .State.Spec.Match}}<dt>Match</dt><dd>{{.State.Spec.Match}}</dd>{{end}}
<dt>Thresholds</dt><dd>error rate at most {{pct .State.Spec.MaxErrorRate}}, p99 at most {{ms .State.Spec.MaxP99}}, at least {{.State.Spec.MinRequests}} requests per {{.State.Spec.Interval}}</dd>
{{- range .State.Spec.Custom}}<dt>Check {{.Name}}</dt><dd><code>{{.Expr}}</code></dd>{{end}}
<dt>Started</dt><dd>{{time .State.Started}} by {{.State.StartedBy}}</dd>
<dt>Page made</dt><dd>{{.Generated}}, from Prometheus at {{.State.Spec.Prometheus}}</dd>
</dl>
<h2>Steps</h2>
<table><tr><th>Step</th><th>To the canary</th><th>Began</th><th>Ended</th><th>Took</th><th>Verdict</th></tr>
{{- range .Steps}}<tr><td>{{.N}}</td><td>{{.Share}}</td><td>{{.Started}}</td><td>{{.Ended}}</td><td>{{.Took}}</td><td>{{.Verdict}}</td></tr>{{end}}
</table>
<h2>Over time</h2>
{{- range .Charts}}<figure>{{.}}</figure>{{end}}
{{- range .Missing}}<p class="missing">Not drawn: {{.}}</p>{{end}}
<h2>Checks</h2>
<table><tr><th>At</th><th>Step</th><th>Canary</th><th>Stable</th><th>Own checks</th><th>Verdict</th></tr>
{{- range .State.Checks}}<tr><td>{{time .At}}</td><td>{{next .Step}}</td><td>{{.Canary}}</td><td>{{.Stable}}</td><td>{{range .Custom}}{{.}}<br>{{end}}</td><td>{{.Verdict}}</td></tr>{{end}}
</table>
</body></html>
`))
