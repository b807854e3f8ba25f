package dashboards

import "github.com/grafana/grafana-foundation-sdk/go/dashboard"

// backends selects the stable Service's and its canary's backends in
// Traefik's Gateway API metrics, which name a backend
// NAMESPACE-SERVICE-SCHEME-PORT@kubernetesgateway; $service is
// NAMESPACE-SERVICE, since a namespace may hold dashes too.
const (
	backends = `service=~"$service(-canary)?-[a-z0-9]+-[0-9]+@kubernetesgateway"`
	canaryOf = `service=~"$service-canary-[a-z0-9]+-[0-9]+@kubernetesgateway"`
)

// Canary is the dashboard of a canary: each backend's requests, errors and
// p99 through the gateway, the canary's share of them.
func Canary() *dashboard.DashboardBuilder {
	const r = "[$__rate_interval]"
	return board("tunnel-canary", "tunnel canary").
		WithVariable(labelVariable("service", "service", "traefik_service_requests_total").
			Label("namespace-service").
			Regex(`/^(.+?)(-canary)?-[a-z0-9]+-[0-9]+@kubernetesgateway$/`)).
		WithRow(dashboard.NewRowBuilder("Canary against stable")).
		WithPanel(panel("Requests", "reqps", "Each backend's requests through the gateway.",
			Query{`sum by (service) (rate(traefik_service_requests_total{` + backends + `}` + r + `))`, "{{service}}"})).
		// "or ... * 0": a backend that answered no 5xx is drawn at 0, not left out.
		WithPanel(panel("Error rate", "percentunit", "Each backend's share of 5xx answers.",
			Query{`(sum by (service) (rate(traefik_service_requests_total{` + backends + `,code=~"5.."}` + r + `)) or sum by (service) (rate(traefik_service_requests_total{` + backends + `}` + r + `)) * 0) / sum by (service) (rate(traefik_service_requests_total{` + backends + `}` + r + `))`, "{{service}}"})).
		WithPanel(panel("p99 latency", "s", "Each backend's 99th percentile.",
			Query{`histogram_quantile(0.99, sum by (service, le) (rate(traefik_service_request_duration_seconds_bucket{` + backends + `}` + r + `)))`, "{{service}}"})).
		WithPanel(panel("Canary's share", "percentunit", "The canary's share of the Service's requests, as the gateway saw them.",
			Query{`sum(rate(traefik_service_requests_total{` + canaryOf + `}` + r + `)) / sum(rate(traefik_service_requests_total{` + backends + `}` + r + `))`, "canary"})).
		WithRow(dashboard.NewRowBuilder("The canary's steps and own checks (from its standby in the cluster)")).
		WithPanel(panel("Step and weight", "short", "The step the canary is at, and its weight in percent; match is 1 while the dark launch's requests go to it.",
			Query{`max(tunnel_canary_step{backend="$service"})`, "step"},
			Query{`max(tunnel_canary_weight{backend="$service"})`, "weight %"},
			Query{`max(tunnel_canary_match{backend="$service"})`, "match"})).
		WithPanel(panel("Own checks", "short", "Each --check's value at the last analysis, against the bound it was held to.",
			Query{`max by (check) (tunnel_canary_check_value{backend="$service"})`, "{{check}}"},
			Query{`max by (check) (tunnel_canary_check_bound{backend="$service"})`, "{{check}} bound"})).
		Annotation(dashboard.NewAnnotationQueryBuilder().Name("Canary steps").Datasource(datasource).Enable(true).IconColor("orange").
			Expr(`changes(max(tunnel_canary_step{backend="$service"})[30s:5s]) > 0`).TitleFormat("step changed"))
}
