package dashboards

import (
	"os"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

// The JSON in the repository is what the Go code builds: run
// `make generate` after changing it.
func TestFilesAreFresh(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil || string(got) != string(want) {
			t.Errorf("dashboards/%s is stale (%v): run make generate", name, err)
		}
	}
}

// Every panel's query parses once Grafana has filled its variables.
func TestEveryQueryParses(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for name, data := range files {
		exprs, err := Expressions(data, map[string]string{"__rate_interval": "1m", "service": "shop-web"})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range exprs {
			n++
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(e); err != nil {
				t.Errorf("%s: %s: %v", name, e, err)
			}
		}
	}
	if n < 15 {
		t.Errorf("%d queries in all, want the panels' (at least 15)", n)
	}
}

// A collapsed row keeps its panels inside it; their queries count too.
func TestExpressionsOfACollapsedRow(t *testing.T) {
	data := []byte(`{"panels": [
		{"type": "row", "collapsed": true, "panels": [{"targets": [{"expr": "up{job=\"$job\"}"}]}]},
		{"targets": [{"expr": "sum(rate(x[$__rate_interval]))"}]}
	], "annotations": {"list": [{"expr": "changes(y[1m]) > 0"}, {"name": "built-in"}]}}`)
	got, err := Expressions(data, map[string]string{"job": "web", "__rate_interval": "1m"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`up{job="web"}`, "sum(rate(x[1m]))", "changes(y[1m]) > 0"}
	if !slices.Equal(got, want) {
		t.Errorf("Expressions = %q, want %q", got, want)
	}
}
