package report

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/canary"
)

// A canary that went through a dark launch and a weighted step and was
// rolled back on its own check, judged by a Prometheus that has a range
// for every query.
func rolledBack(t *testing.T, prom string) *canary.State {
	t.Helper()
	start := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }
	end1, end2 := at(30), at(60)
	check, err := canary.ParseCheck(`conversion: sum(rate(orders_total{result="ok",{{canary_pods}}}[{{interval}}])) / sum(rate(orders_total{{canary_pods}}[{{interval}}])) >= 0.9`)
	if err != nil {
		t.Fatal(err)
	}
	return &canary.State{
		Spec: canary.Spec{Service: "shop", Image: "shop:2", Steps: []int{canary.MatchStep, 50}, Match: "header:x-beta=1",
			Interval: canary.Duration(30 * time.Second), MaxErrorRate: 0.01, MaxP99: canary.Duration(500 * time.Millisecond),
			MinRequests: 20, Prometheus: prom, Metrics: "traefik", Custom: []canary.Custom{check}},
		Namespace: "team", Stable: "shop", StableImage: "shop:1", Canary: "shop-canary", Route: "httproute/shop", Port: 80,
		Phase: canary.RolledBack, Reason: "check conversion: 0.5 is not >= 0.9 over 30s",
		Steps: []canary.Record{
			{Step: 0, Weight: 0, Started: at(0), Ended: &end1, Verdict: "healthy"},
			{Step: 1, Weight: 50, Started: at(30), Ended: &end2, Verdict: "check conversion: 0.5 is not >= 0.9 over 30s"},
		},
		Checks: []canary.Check{{At: at(60), Step: 1, Weight: 50, Canary: canary.Sample{Requests: 300}, Stable: canary.Sample{Requests: 300},
			Custom:  []canary.CheckValue{{Name: "conversion", Value: 0.5, Op: ">=", Bound: 0.9}},
			Verdict: "check conversion: 0.5 is not >= 0.9 over 30s"}},
		Started: start, Updated: at(62), StartedBy: "alice",
	}
}

func fakeRanges(t *testing.T) (string, *[]string) {
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.FormValue("query")
		asked = append(asked, q)
		v := 0.2
		if strings.Contains(q, "shop-canary") {
			v = 0.4
		}
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[%d,"%g"],[%d,"%g"],[%d,"NaN"]]}]}}`,
			time.Date(2026, 12, 7, 10, 0, 10, 0, time.UTC).Unix(), v, time.Date(2026, 12, 7, 10, 0, 40, 0, time.UTC).Unix(), v*1.5,
			time.Date(2026, 12, 7, 10, 0, 50, 0, time.UTC).Unix())
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &asked
}

func TestReportDrawsEveryChartOffline(t *testing.T) {
	url, asked := fakeRanges(t)
	st := rolledBack(t, url)
	d, err := Gather(context.Background(), st, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Missing) > 0 {
		t.Errorf("missing: %v", d.Missing)
	}
	// Error rate and p99 for each backend, and both sides of the check.
	if len(*asked) != 6 {
		t.Errorf("asked %d ranges, want 6: %q", len(*asked), *asked)
	}
	if len(d.Errors[0].Points) != 2 {
		t.Errorf("canary error points %v: the NaN should be left out", d.Errors[0].Points)
	}
	var page bytes.Buffer
	if err := Write(&page, d); err != nil {
		t.Fatal(err)
	}
	html := page.String()
	if n := strings.Count(html, "<svg"); n != 4 {
		t.Errorf("%d charts, want 4 (share, errors, p99, the check)", n)
	}
	for _, want := range []string{
		"RolledBack: check conversion: 0.5 is not &gt;= 0.9 over 30s",
		"<td>requests with header x-beta=1</td>",
		"<td>50% of traffic and requests with header x-beta=1</td>",
		"conversion: 0.5 &gt;= 0.9",
		"at least 20 requests per 30s",
	} {
		if !strings.Contains(html, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Nothing to fetch: no scripts, no stylesheets or images by address.
	if loads := regexp.MustCompile(`(?i)<script|\s(src|href)\s*=|@import|url\(`).FindAllString(html, -1); len(loads) > 0 {
		t.Errorf("the page loads %q", loads)
	}
}

// Prometheus away: the page still shows the record, and says what it
// could not draw.
func TestReportWithoutPrometheus(t *testing.T) {
	st := rolledBack(t, "http://127.0.0.1:1")
	d, err := Gather(context.Background(), st, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var page bytes.Buffer
	if err := Write(&page, d); err != nil {
		t.Fatal(err)
	}
	if len(d.Missing) != 6 || !strings.Contains(page.String(), "Not drawn: canary:") || !strings.Contains(page.String(), "<td>requests with header x-beta=1</td>") {
		t.Errorf("missing %v\n%s", d.Missing, page.String())
	}
}
