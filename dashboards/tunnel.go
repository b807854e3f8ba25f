package dashboards

import "github.com/grafana/grafana-foundation-sdk/go/dashboard"

// Tunnel is the dashboard of tunnel itself: what laptops' daemons carry
// and resolve, what the manager relays and refuses, what the sidecars'
// intercepts take and give back.
func Tunnel() *dashboard.DashboardBuilder {
	const r = "[$__rate_interval]"
	return board("tunnel", "tunnel").
		WithRow(dashboard.NewRowBuilder("Laptops (daemon)")).
		WithPanel(panel("Sessions", "short", "Daemons connected to a cluster, and whose session to the manager is live; reconnects per second.",
			Query{"sum(tunnel_daemon_connected)", "connected"},
			Query{"sum(tunnel_daemon_session_up)", "session up"},
			Query{"sum(rate(tunnel_daemon_session_reconnects_total" + r + "))", "reconnects/s"})).
		WithPanel(panel("Flows", "short", "Connections and UDP flows into the cluster now, and new ones per second, by protocol; those the WireGuard path carried.",
			Query{"sum by (proto) (tunnel_daemon_flows_active)", "{{proto}} open"},
			Query{"sum by (proto) (rate(tunnel_daemon_flows_total" + r + "))", "{{proto}} new/s"},
			Query{"sum by (proto) (rate(tunnel_daemon_wireguard_flows_total" + r + "))", "{{proto}} over WireGuard/s"})).
		WithPanel(panel("Bytes", "Bps", "Payload carried, by direction.",
			Query{"sum by (direction) (rate(tunnel_daemon_bytes_total" + r + "))", "{{direction}}"})).
		WithPanel(panel("DNS", "reqps", "Queries the laptops' resolvers answered, failures among them, and where the answers came from.",
			Query{"sum(rate(tunnel_daemon_dns_queries_total" + r + "))", "queries"},
			Query{"sum(rate(tunnel_daemon_dns_failures_total" + r + "))", "SERVFAIL"},
			Query{"sum by (via) (rate(tunnel_daemon_dns_lookups_total" + r + "))", "via {{via}}"})).
		WithPanel(panel("Dials failed", "short", "Flows whose dial failed, those the manager refused (beyond what the user may reach), and those dropped for too many dials at once.",
			Query{"sum(rate(tunnel_daemon_dial_errors_total" + r + "))", "failed"},
			Query{"sum(rate(tunnel_daemon_dials_refused_total" + r + "))", "refused"},
			Query{"sum(rate(tunnel_daemon_dropped_dials_total" + r + "))", "dropped"})).
		WithRow(dashboard.NewRowBuilder("Manager")).
		WithPanel(panel("Sessions and streams", "short", "Laptop sessions now; streams opened per second, by kind.",
			Query{"sum(tunnel_manager_sessions_active)", "sessions"},
			Query{"sum by (kind) (rate(tunnel_manager_streams_total" + r + "))", "{{kind}}/s"})).
		WithPanel(panel("Bytes relayed", "Bps", "By kind of stream and direction.",
			Query{"sum by (kind, direction) (rate(tunnel_manager_bytes_total" + r + "))", "{{kind}} {{direction}}"})).
		WithPanel(panel("DNS latency", "s", "How long the manager takes to answer the laptops' cluster queries.",
			Query{"histogram_quantile(0.5, sum by (le) (rate(tunnel_manager_dns_query_duration_seconds_bucket" + r + ")))", "p50"},
			Query{"histogram_quantile(0.99, sum by (le) (rate(tunnel_manager_dns_query_duration_seconds_bucket" + r + ")))", "p99"})).
		WithPanel(panel("Refused", "short", "Calls and streams refused, by session kind and reason: what someone tried and may not.",
			Query{"sum by (session, reason) (rate(tunnel_manager_refused_total" + r + "))", "{{session}} {{reason}}"})).
		WithPanel(panel("Intercepted connections", "short", "Carried to laptops through the manager, by path.",
			Query{"sum by (path) (rate(tunnel_manager_intercept_streams_total" + r + "))", "{{path}}"})).
		WithRow(dashboard.NewRowBuilder("Intercepts (sidecars)")).
		WithPanel(panel("Intercepted requests", "reqps", "Requests (or connections) each intercept took, by result: to its laptop, failed, mirrored.",
			Query{"sum by (intercept, result) (rate(tunnel_sidecar_intercepted_requests_total" + r + "))", "{{intercept}} {{result}}"})).
		WithPanel(panel("Fallbacks", "reqps", "Requests an intercept should have taken that went to the app because its laptop could not answer.",
			Query{"sum by (intercept) (rate(tunnel_sidecar_fallbacks_total" + r + "))", "{{intercept}}"})).
		WithPanel(panel("Connections to laptops", "short", "Opened by the sidecars, by path: direct (a laptop's spare) or through the manager.",
			Query{"sum by (path) (rate(tunnel_sidecar_laptop_connections_total" + r + "))", "{{path}}"}))
}
