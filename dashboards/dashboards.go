// Package dashboards builds tunnel's Grafana dashboards from Go, with the
// Grafana Foundation SDK: one for tunnel itself (the laptop's daemon, the
// manager, the sidecars) and one for canaries (each backend's traffic
// through the gateway). `make generate` writes them as JSON beside this
// file, where a test fails when they are stale; an e2e test runs every
// panel's query against the lab's Prometheus.
package dashboards

//go:generate go run ./gen

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Files are the dashboards as the repository keeps them, by file name.
func Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	for name, build := range map[string]func() *dashboard.DashboardBuilder{"tunnel.json": Tunnel, "canary.json": Canary} {
		d, err := build().Build()
		if err != nil {
			return nil, fmt.Errorf("dashboard %s: %w", name, err)
		}
		data, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			return nil, err
		}
		out[name] = append(data, '\n')
	}
	return out, nil
}

// datasource is the dashboards' one variable datasource, chosen on import.
var datasource = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func board(uid, title string) *dashboard.DashboardBuilder {
	return dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Tags([]string{"tunnel"}).
		Refresh("10s").
		Time("now-30m", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus"))
}

// Query is one line of a panel: PromQL and the legend of its series.
type Query struct{ Expr, Legend string }

// panel is a time series of queries.
func panel(title, unit, description string, queries ...Query) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(datasource).
		Height(8).Span(8).FillOpacity(10).Min(0)
	for i, q := range queries {
		p.WithTarget(prometheus.NewDataqueryBuilder().Datasource(datasource).Expr(q.Expr).LegendFormat(q.Legend).
			RefId(string(rune('A' + i))))
	}
	return p
}

// labelVariable is a variable of one label's values in a metric.
func labelVariable(name, label, metric string) *dashboard.QueryVariableBuilder {
	q := fmt.Sprintf("label_values(%s, %s)", metric, label)
	return dashboard.NewQueryVariableBuilder(name).Label(name).Datasource(datasource).
		Query(dashboard.StringOrMap{String: &q}).Definition(q).Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc)
}

// Expressions are the queries of a dashboard's panels, with Grafana's
// variables (vars, by name without the $) filled, for a test to run.
func Expressions(dashboard []byte, vars map[string]string) ([]string, error) {
	type panel struct {
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []panel `json:"panels"` // a collapsed row's
	}
	var d struct {
		Panels      []panel `json:"panels"`
		Annotations struct {
			List []struct {
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, err
	}
	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			exprs = append(exprs, a.Expr)
		}
	}
	out := make([]string, len(exprs))
	for i, e := range exprs {
		// Longer names first: $service_x is not $service.
		names := slices.SortedFunc(maps.Keys(vars), func(a, b string) int { return len(b) - len(a) })
		for _, k := range names {
			e = strings.ReplaceAll(e, "$"+k, vars[k])
		}
		out[i] = e
	}
	return out, nil
}
