package canary

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
)

// Sample is what the gateway saw of one backend Service over a window.
type Sample struct {
	Requests  float64       `json:"requests"`
	ErrorRate float64       `json:"errorRate"` // 5xx answers per request, 0 to 1
	P99       time.Duration `json:"p99"`       // 0 when there were no requests
}

func (s Sample) String() string {
	return fmt.Sprintf("%.0f requests, %s errors, p99 %s", s.Requests, Percent(s.ErrorRate), s.P99.Round(time.Millisecond))
}

// Percent writes a fraction as a percentage: 0.015 is "1.5%".
func Percent(f float64) string {
	return strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.2f", f*100), "0"), ".0") + "%"
}

// Dialect is how one gateway names its per-backend metrics in PromQL.
// Each query has two verbs: the backend selector and the window.
type Dialect struct {
	Name     string
	Requests string // total requests
	Errors   string // 5xx answers
	P99      string // seconds
	// Selector is a label matcher for a Service's backend.
	Selector func(ns, service string, port int32) string
}

// Dialects are the gateways whose metrics the canary reads.
var Dialects = map[string]Dialect{
	// Traefik's Gateway API provider names a backend
	// NAMESPACE-SERVICE-SCHEME-PORT@kubernetesgateway.
	"traefik": {
		Name:     "traefik",
		Requests: `sum(increase(traefik_service_requests_total{%s}[%s]))`,
		Errors:   `sum(increase(traefik_service_requests_total{%s,code=~"5.."}[%s]))`,
		P99:      `histogram_quantile(0.99, sum by (le) (rate(traefik_service_request_duration_seconds_bucket{%s}[%s])))`,
		Selector: func(ns, svc string, port int32) string {
			return matcher("service", fmt.Sprintf(`%s-%s-[a-z0-9]+-%d@kubernetesgateway`, regexp.QuoteMeta(ns), regexp.QuoteMeta(svc), port))
		},
	},
	// Emissary roots Envoy's cluster stats at the Mapping's service with
	// the scheme cut and every other character but letters and digits
	// made '_' ("echo-canary.shop:80" is echo_canary_shop_80); before 2.0.1
	// at "cluster_" plus that.
	"emissary": {
		Name:     "emissary",
		Requests: `sum(increase(envoy_cluster_upstream_rq_total{%s}[%s]))`,
		Errors:   `sum(increase(envoy_cluster_upstream_rq_xx{%s,envoy_response_code_class="5"}[%s]))`,
		P99:      `histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{%s}[%s]))) / 1000`,
		Selector: func(ns, svc string, port int32) string {
			n, s := nonWord.ReplaceAllString(ns, "_"), nonWord.ReplaceAllString(svc, "_")
			return matcher("envoy_cluster_name", fmt.Sprintf(`(cluster_)?%s(_%s(_svc(_cluster_local)?)?)?(_%d)?(_%s)?`, s, n, port, n))
		},
	},
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]`)

// matcher is name=~"re" as PromQL writes it: the Prometheus library quotes
// the value, whatever it holds (the names come from the cluster and from
// the canary's ConfigMap, which others may edit).
func matcher(name, re string) string {
	m, err := labels.NewMatcher(labels.MatchRegexp, name, re)
	if err != nil { // a regexp that does not compile selects nothing
		m = labels.MustNewMatcher(labels.MatchEqual, name, re)
	}
	return m.String()
}

// Prometheus answers the canary's questions.
type Prometheus struct {
	api     promv1.API
	dialect Dialect
}

// NewPrometheus returns a client of the Prometheus at url.
func NewPrometheus(url string, d Dialect) (*Prometheus, error) {
	c, err := api.NewClient(api.Config{Address: url})
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w", url, err)
	}
	return &Prometheus{api: promv1.NewAPI(c), dialect: d}, nil
}

// Sample measures the backend selected by sel over the window ending now.
func (p *Prometheus) Sample(ctx context.Context, sel string, window time.Duration) (Sample, error) {
	w := model.Duration(window).String()
	var s Sample
	req, err := p.scalar(ctx, fmt.Sprintf(p.dialect.Requests, sel, w))
	if err != nil {
		return s, err
	}
	s.Requests = req
	if req == 0 {
		return s, nil
	}
	errs, err := p.scalar(ctx, fmt.Sprintf(p.dialect.Errors, sel, w))
	if err != nil {
		return s, err
	}
	s.ErrorRate = math.Min(errs/req, 1)
	p99, err := p.scalar(ctx, fmt.Sprintf(p.dialect.P99, sel, w))
	if err != nil {
		return s, err
	}
	if !math.IsNaN(p99) && !math.IsInf(p99, 0) {
		s.P99 = time.Duration(p99 * float64(time.Second))
	}
	return s, nil
}

// scalar runs an instant query whose answer is one number; no series is 0.
func (p *Prometheus) scalar(ctx context.Context, q string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, _, _, err := p.api.Query(ctx, q, time.Now())
	if err != nil {
		return 0, fmt.Errorf("ask Prometheus %s: %w", q, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return 0, fmt.Errorf("prometheus answered %s with a %s, not a vector", q, v.Type())
	}
	if len(vec) == 0 {
		return 0, nil
	}
	return float64(vec[0].Value), nil
}

// Judge says whether the canary's sample and its custom checks pass the
// spec's thresholds: "" when healthy, else one sentence naming the metric
// and its value. A check without data is too little traffic, as too few
// requests are.
func Judge(spec Spec, canary, stable Sample, custom ...CheckValue) (verdict string, enough bool) {
	if canary.Requests < float64(spec.MinRequests) {
		return fmt.Sprintf("too few requests to judge: %.0f in %s, want at least %d", canary.Requests, time.Duration(spec.Interval), spec.MinRequests), false
	}
	if canary.ErrorRate > spec.MaxErrorRate {
		return fmt.Sprintf("error rate %s over %s is above %s (stable: %s)", Percent(canary.ErrorRate), time.Duration(spec.Interval),
			Percent(spec.MaxErrorRate), Percent(stable.ErrorRate)), true
	}
	if spec.MaxP99 > 0 && canary.P99 > time.Duration(spec.MaxP99) {
		return fmt.Sprintf("p99 latency %s over %s is above %s (stable: %s)", canary.P99.Round(time.Millisecond), time.Duration(spec.Interval),
			time.Duration(spec.MaxP99), stable.P99.Round(time.Millisecond)), true
	}
	for _, c := range custom {
		switch {
		case c.Problem != "":
			return fmt.Sprintf("check %s cannot be judged: %s", c.Name, c.Problem), true
		case c.NoData:
			return fmt.Sprintf("too few requests to judge: check %s has no data in %s", c.Name, time.Duration(spec.Interval)), false
		case !c.Passed:
			return fmt.Sprintf("check %s: %s is not %s %s over %s", c.Name, num(c.Value), c.Op, num(c.Bound), time.Duration(spec.Interval)), true
		}
	}
	return "", true
}

// Range asks for one series from start to end, a point each step; NaN
// and infinite points (no requests) are left out.
func (p *Prometheus) Range(ctx context.Context, q string, start, end time.Time, step time.Duration) ([]model.SamplePair, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, _, _, err := p.api.QueryRange(ctx, q, promv1.Range{Start: start, End: end, Step: step})
	if err != nil {
		return nil, err
	}
	m, ok := v.(model.Matrix)
	if !ok {
		return nil, fmt.Errorf("prometheus answered a %s, not a matrix", v.Type())
	}
	if len(m) == 0 {
		return nil, errNoData
	}
	var out []model.SamplePair
	for _, pt := range m[0].Values {
		if f := float64(pt.Value); !math.IsNaN(f) && !math.IsInf(f, 0) {
			out = append(out, pt)
		}
	}
	return out, nil
}
