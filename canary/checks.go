package canary

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
)

// A Custom check judges the canary by the hypothesis's own metric: a
// PromQL comparison, "NAME: QUERY OP QUERY-OR-NUMBER", whose two sides are
// asked of Prometheus apart, so a verdict can name both values. In the
// queries, placeholders stand for what only the canary knows:
//
//	{{canary}}, {{stable}}            the gateway's label matchers for each backend
//	{{canary_pods}}, {{stable_pods}}  namespace and pod matchers for each Deployment's pods
//	{{interval}}                      the step's interval, as a range: rate(x[{{interval}}])
//
// A matcher placeholder after '{' or ',' is the matchers alone; anywhere
// else (orders_total{{canary_pods}}) it brings its braces.
type Custom struct {
	Name string `json:"name"`
	Expr string `json:"expr"`
}

// Vars fill a check's placeholders.
type Vars struct {
	Canary, Stable         string // gateway matchers
	CanaryPods, StablePods string // pod matchers
	Interval               time.Duration
}

// checkName is what a check may be called: short, and safe in a sentence.
var checkName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_ .-]{0,62}$`)

var placeholder = regexp.MustCompile(`\{\{\s*([A-Za-z_]+)\s*\}\}`)

// ParseCheck reads --check "NAME: QUERY OP VALUE" and refuses one whose
// query does not parse as a PromQL comparison.
func ParseCheck(s string) (Custom, error) {
	name, expr, ok := strings.Cut(s, ":")
	c := Custom{Name: strings.TrimSpace(name), Expr: strings.TrimSpace(expr)}
	if !ok || !checkName.MatchString(c.Name) {
		return c, fmt.Errorf("--check %q: want NAME: QUERY OP VALUE, NAME a word of letters, digits, ' ', '.', '_' or '-'", s)
	}
	if len(c.Expr) > 4096 {
		return c, fmt.Errorf("--check %s: the query is longer than 4096 bytes", c.Name)
	}
	// Stand-ins of the right shape: the parser checks the rest.
	if _, err := c.Compile(Vars{Canary: `service="x"`, Stable: `service="y"`,
		CanaryPods: `pod="x"`, StablePods: `pod="y"`, Interval: time.Minute}); err != nil {
		return c, err
	}
	return c, nil
}

// Compiled is a check with its placeholders filled: two instant queries
// and the comparison between their values.
type Compiled struct {
	LHS, RHS string
	Op       string
}

// Compile fills the placeholders and parses the comparison.
func (c Custom) Compile(v Vars) (Compiled, error) {
	var bad []string
	expanded := c.Expr
	var b strings.Builder
	last := 0
	for _, loc := range placeholder.FindAllStringSubmatchIndex(expanded, -1) {
		before := strings.TrimRight(expanded[:loc[0]], " \t")
		b.WriteString(expanded[last:loc[0]])
		last = loc[1]
		name := expanded[loc[2]:loc[3]]
		var matchers string
		switch name {
		case "canary":
			matchers = v.Canary
		case "stable":
			matchers = v.Stable
		case "canary_pods":
			matchers = v.CanaryPods
		case "stable_pods":
			matchers = v.StablePods
		case "interval":
			b.WriteString(model.Duration(v.Interval).String())
			continue
		default:
			bad = append(bad, "{{"+name+"}}")
			continue
		}
		if strings.HasSuffix(before, "{") || strings.HasSuffix(before, ",") {
			b.WriteString(matchers)
		} else {
			b.WriteString("{" + matchers + "}")
		}
	}
	b.WriteString(expanded[last:])
	if len(bad) > 0 {
		return Compiled{}, fmt.Errorf("--check %s: unknown placeholder %s; there are {{canary}}, {{stable}}, {{canary_pods}}, {{stable_pods}} and {{interval}}",
			c.Name, strings.Join(bad, ", "))
	}
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(b.String())
	if err != nil {
		return Compiled{}, fmt.Errorf("--check %s: the query does not parse: %s", c.Name, oneLine(err.Error()))
	}
	for {
		p, ok := expr.(*parser.ParenExpr)
		if !ok {
			break
		}
		expr = p.Expr
	}
	cmp, ok := expr.(*parser.BinaryExpr)
	if !ok || !cmp.Op.IsComparisonOperator() || cmp.ReturnBool {
		return Compiled{}, fmt.Errorf("--check %s: want a comparison, QUERY OP VALUE with OP one of < <= > >= == !=, not %s", c.Name, oneLine(expr.String()))
	}
	// A comparison inside a side filters its series away (x > y > 1):
	// the check would read "no data" where it means "failed".
	for _, side := range []parser.Node{cmp.LHS, cmp.RHS} {
		var nested error
		parser.Inspect(side, func(n parser.Node, _ []parser.Node) error {
			if b, ok := n.(*parser.BinaryExpr); ok && b.Op.IsComparisonOperator() && !b.ReturnBool && nested == nil {
				nested = fmt.Errorf("--check %s: one comparison only; inside a side, %s filters series away (write it with bool)", c.Name, oneLine(b.String()))
			}
			return nil
		})
		if nested != nil {
			return Compiled{}, nested
		}
	}
	return Compiled{LHS: cmp.LHS.String(), RHS: cmp.RHS.String(), Op: cmp.Op.String()}, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Holds says whether lhs OP rhs.
func (c Compiled) Holds(lhs, rhs float64) bool {
	switch c.Op {
	case "<":
		return lhs < rhs
	case "<=":
		return lhs <= rhs
	case ">":
		return lhs > rhs
	case ">=":
		return lhs >= rhs
	case "==":
		return lhs == rhs
	case "!=":
		return lhs != rhs
	}
	return false
}

// CheckValue is one custom check's outcome in an analysis.
type CheckValue struct {
	Name    string  `json:"name"`
	Value   float64 `json:"value"`
	Op      string  `json:"op"`
	Bound   float64 `json:"bound"`
	NoData  bool    `json:"noData,omitempty"`
	Passed  bool    `json:"passed"`
	Problem string  `json:"problem,omitempty"`
}

func (v CheckValue) String() string {
	switch {
	case v.Problem != "":
		return v.Name + ": " + v.Problem
	case v.NoData:
		return v.Name + ": no data"
	}
	return fmt.Sprintf("%s: %s %s %s", v.Name, num(v.Value), v.Op, num(v.Bound))
}

func num(f float64) string { return strconv.FormatFloat(f, 'g', 4, 64) }

// errNoData is a query that returned nothing (or NaN): too little traffic.
var errNoData = errors.New("no data")

// errCheck is a check's own fault (bad data, a query Prometheus cannot
// run, several series), not Prometheus': asking again changes nothing.
var errCheck = errors.New("the check")

// Evaluate asks Prometheus both sides of a compiled check. An error is
// Prometheus' (away, overloaded, timing out): the canary stays at its step
// and asks again; the check's own faults are in the value's Problem.
func (p *Prometheus) Evaluate(ctx context.Context, name string, c Compiled) (CheckValue, error) {
	v := CheckValue{Name: name, Op: c.Op}
	var err error
	if v.Value, err = p.value(ctx, c.LHS); err == nil {
		v.Bound, err = p.value(ctx, c.RHS)
	}
	switch {
	case errors.Is(err, errNoData):
		v.NoData = true
	case errors.Is(err, errCheck):
		v.Problem = strings.TrimPrefix(err.Error(), errCheck.Error()+": ")
	case err != nil:
		return v, fmt.Errorf("check %s: %w", name, err)
	default:
		v.Passed = c.Holds(v.Value, v.Bound)
	}
	return v, nil
}

// value runs an instant query whose answer must be one number.
func (p *Prometheus) value(ctx context.Context, q string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, _, _, err := p.api.Query(ctx, q, time.Now())
	var apiErr *promv1.Error
	if errors.As(err, &apiErr) && (apiErr.Type == promv1.ErrBadData || apiErr.Type == promv1.ErrExec) {
		return 0, fmt.Errorf("%w: Prometheus cannot run %s: %s", errCheck, q, apiErr.Msg)
	}
	if err != nil {
		return 0, fmt.Errorf("ask Prometheus %s: %w", q, err)
	}
	var f float64
	switch r := res.(type) {
	case *model.Scalar:
		f = float64(r.Value)
	case model.Vector:
		if len(r) == 0 {
			return 0, errNoData
		}
		if len(r) > 1 {
			return 0, fmt.Errorf("%w: %s returns %d series, want one: aggregate it (sum, avg, max)", errCheck, q, len(r))
		}
		f = float64(r[0].Value)
	default:
		return 0, fmt.Errorf("%w: %s returns a %s, want one number", errCheck, q, res.Type())
	}
	if math.IsNaN(f) {
		return 0, errNoData
	}
	return f, nil
}

// VarsOf are the placeholders' values for a canary read with dialect d.
func VarsOf(s *State, d Dialect) Vars {
	pods := func(deployment string) string {
		// A Deployment's pods are DEPLOYMENT-HASH-HASH: the canary's
		// (echo-canary-…) never match the stable's pattern (echo-…-…).
		return matcher("namespace", regexp.QuoteMeta(s.Namespace)) + "," +
			matcher("pod", regexp.QuoteMeta(deployment)+"-[a-z0-9]+-[a-z0-9]+")
	}
	return Vars{
		Canary:     d.Selector(s.Namespace, s.Canary, s.Port),
		Stable:     d.Selector(s.Namespace, s.Spec.Service, s.Port),
		CanaryPods: pods(s.Canary),
		StablePods: pods(s.Stable),
		Interval:   time.Duration(s.Spec.Interval),
	}
}

// customChecks evaluates the canary's own checks; an error is Prometheus'.
func (p *Prometheus) customChecks(ctx context.Context, st *State) ([]CheckValue, error) {
	var out []CheckValue
	for _, c := range st.Spec.Custom {
		comp, err := c.Compile(VarsOf(st, p.dialect))
		if err != nil { // Check refused it when the record was read
			out = append(out, CheckValue{Name: c.Name, Problem: err.Error()})
			continue
		}
		v, err := p.Evaluate(ctx, c.Name, comp)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
