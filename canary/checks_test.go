package canary

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseCheckRefusesWhatDoesNotParse(t *testing.T) {
	for in, want := range map[string]string{
		"conversion sum(x) > 1":                    "want NAME: QUERY OP VALUE",
		"conversion: sum(rate(x[1m]) > 0.9":        "the query does not parse",
		"conversion: sum(x{{canary}}) > 0.9 ) ":    "the query does not parse",
		"conversion: sum(x{{canry}}) > 0.9":        "unknown placeholder {{canry}}",
		"conversion: sum(x{{canary}})":             "want a comparison",
		"conversion: sum(x{{canary}}) + 1":         "want a comparison",
		"conversion: sum(x{{canary}}) > bool 0.9":  "want a comparison",
		"conversion: nosuchfunction(x) > 1":        "the query does not parse",
		"conv; drop: sum(x) > 1":                   "want NAME: QUERY OP VALUE",
		"conversion: " + strings.Repeat("x", 5000): "longer than 4096",
		"conversion: sum(x) > sum(y) > 1":          "one comparison only",
		"conversion: sum(x > 1) >= 1":              "one comparison only",
	} {
		if _, err := ParseCheck(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCheck(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestCheckPlaceholders(t *testing.T) {
	st := &State{Namespace: "shop", Canary: "echo-canary", Stable: "echo", Port: 80,
		Spec: Spec{Service: "echo", Interval: Duration(30 * time.Second)}}
	v := VarsOf(st, Dialects["traefik"])
	for in, want := range map[string]Compiled{
		`ok: sum(rate(orders_total{{canary_pods}}[{{interval}}])) >= 1`: {
			LHS: `sum(rate(orders_total{namespace=~"shop",pod=~"echo-canary-[a-z0-9]+-[a-z0-9]+"}[30s]))`, RHS: "1", Op: ">=",
		},
		`ok: sum(orders_total{result="ok", {{canary_pods}}}) / sum(orders_total{ {{canary_pods}} }) > 0.95 * sum(orders_total{result="ok",{{stable_pods}}}) / sum(orders_total{{{stable_pods}}})`: {
			LHS: `sum(orders_total{namespace=~"shop",pod=~"echo-canary-[a-z0-9]+-[a-z0-9]+",result="ok"}) / sum(orders_total{namespace=~"shop",pod=~"echo-canary-[a-z0-9]+-[a-z0-9]+"})`,
			RHS: `0.95 * sum(orders_total{namespace=~"shop",pod=~"echo-[a-z0-9]+-[a-z0-9]+",result="ok"}) / sum(orders_total{namespace=~"shop",pod=~"echo-[a-z0-9]+-[a-z0-9]+"})`,
			Op:  ">",
		},
		`rate: (sum(rate(traefik_service_requests_total{{canary}}[1m])) < 100)`: {
			LHS: `sum(rate(traefik_service_requests_total{service=~"shop-echo-canary-[a-z0-9]+-80@kubernetesgateway"}[1m]))`, RHS: "100", Op: "<",
		},
	} {
		c, err := ParseCheck(in)
		if err != nil {
			t.Fatalf("ParseCheck(%q): %v", in, err)
		}
		got, err := c.Compile(v)
		if err != nil || got != want {
			t.Errorf("Compile(%q) =\n%+v (%v), want\n%+v", in, got, err, want)
		}
	}
	// The stable's pod pattern never takes a canary pod.
	if re := `^echo-[a-z0-9]+-[a-z0-9]+$`; regexp.MustCompile(re).MatchString("echo-canary-5d9f8-x2x9q") {
		t.Errorf("%s takes the canary's pod", re)
	}
}

func TestJudgeCustomChecks(t *testing.T) {
	spec := Spec{Interval: Duration(30 * time.Second), MaxErrorRate: 0.01, MinRequests: 20}
	ok := Sample{Requests: 100}
	for _, tc := range []struct {
		v          CheckValue
		want       string
		wantEnough bool
	}{
		{CheckValue{Name: "conversion", Value: 0.9, Op: ">=", Bound: 0.5, Passed: true}, "", true},
		{CheckValue{Name: "conversion", Value: 0.6123, Op: ">=", Bound: 0.855}, "check conversion: 0.6123 is not >= 0.855 over 30s", true},
		{CheckValue{Name: "conversion", NoData: true}, "too few requests to judge: check conversion has no data in 30s", false},
		{CheckValue{Name: "conversion", Problem: "x returns 3 series"}, "check conversion cannot be judged: x returns 3 series", true},
	} {
		got, enough := Judge(spec, ok, ok, tc.v)
		if got != tc.want || enough != tc.wantEnough {
			t.Errorf("Judge(%+v) = %q, %v; want %q, %v", tc.v, got, enough, tc.want, tc.wantEnough)
		}
	}
}

func TestEvaluateAsksBothSides(t *testing.T) {
	answers := map[string]string{
		"lhs":   `{"resultType":"vector","result":[{"metric":{},"value":[1,"0.62"]}]}`,
		"rhs":   `{"resultType":"scalar","result":[1,"0.95"]}`,
		"none":  `{"resultType":"vector","result":[]}`,
		"nan":   `{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}`,
		"three": `{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"1"]},{"metric":{"a":"3"},"value":[1,"1"]}]}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch q := r.FormValue("query"); q {
		case "bad":
			w.WriteHeader(http.StatusUnprocessableEntity)
			fmt.Fprint(w, `{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}`)
		case "away":
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"status":"error","errorType":"unavailable","error":"shutting down"}`)
		default:
			fmt.Fprintf(w, `{"status":"success","data":%s}`, answers[q])
		}
	}))
	defer srv.Close()
	p, _ := NewPrometheus(srv.URL, Dialects["traefik"])
	ctx := context.Background()
	eval := func(lhs, rhs, op string) CheckValue {
		v, err := p.Evaluate(ctx, "c", Compiled{LHS: lhs, RHS: rhs, Op: op})
		if err != nil {
			t.Errorf("%s %s %s: %v", lhs, op, rhs, err)
		}
		return v
	}
	if v := eval("lhs", "rhs", ">="); v.Passed || v.Value != 0.62 || v.Bound != 0.95 || v.String() != "c: 0.62 >= 0.95" {
		t.Errorf("0.62 >= 0.95: %+v", v)
	}
	if v := eval("lhs", "rhs", "<"); !v.Passed {
		t.Errorf("0.62 < 0.95: %+v", v)
	}
	for _, q := range []string{"none", "nan"} {
		if v := eval("lhs", q, "<"); !v.NoData || v.Passed {
			t.Errorf("%s: %+v", q, v)
		}
	}
	// The check's own faults are its problem: judged, not asked again.
	if v := eval("three", "rhs", "<"); !strings.Contains(v.Problem, "returns 3 series, want one") || v.Passed {
		t.Errorf("three series: %+v", v)
	}
	if v := eval("bad", "rhs", "<"); !strings.Contains(v.Problem, "Prometheus cannot run bad: many-to-many matching not allowed") || v.Passed {
		t.Errorf("a query Prometheus cannot run: %+v", v)
	}
	// Prometheus away: an error, so the canary stays and asks again.
	if _, err := p.Evaluate(ctx, "c", Compiled{LHS: "away", RHS: "rhs", Op: "<"}); err == nil {
		t.Error("Prometheus away is not an error")
	}
}
