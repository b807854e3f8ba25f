package canary

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Ask promotes ("promote") or aborts ("abort") a canary: its driver, if
// one is alive, is asked through the record and carries it out within a
// second; otherwise this Runner drives the canary there itself. It returns
// the canary's end state.
func (r *Runner) Ask(ctx context.Context, service, action string) (*State, error) {
	host, _ := os.Hostname()
	holder, err := r.Leases.Holder(ctx, service)
	if err != nil {
		return nil, err
	}
	var driver *Driver
	err = r.Store.Update(ctx, service, func(st *State) error {
		if st.Phase.Done() {
			return fmt.Errorf("the canary of %s already ended: %s (%s)", service, st.Phase, st.Reason)
		}
		if action == "promote" && st.Phase != Progressing && st.Phase != Promoting {
			return fmt.Errorf("the canary of %s is %s; only a canary taking traffic can be promoted", service, strings.ToLower(string(st.Phase)))
		}
		st.Request = action
		driver = nil
		if holder.Holds(time.Now(), host) && !holder.same(r.Me) {
			driver = holder
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if driver != nil {
		r.Progress(fmt.Sprintf("Asked %s, who drives the canary, to %s it", driver, action))
	}
	// Drive waits while a live driver holds the lease: that driver carries
	// the request out and lets go, and this one finds the canary ended; a
	// driver that dies first leaves the job to this one.
	err = r.drive(ctx, service, driver != nil)
	st, gerr := r.Store.Get(ctx, service)
	if gerr != nil {
		return nil, err
	}
	return st, err
}

// Describe writes a canary's record for people; holder is who holds its
// lease (nil: nobody).
func Describe(w io.Writer, st *State, holder *Driver, now time.Time) {
	// Anyone who may edit the record writes its reasons and names: none of
	// it may steer the terminal.
	w = printable{w}
	host, _ := os.Hostname()
	fmt.Fprintf(w, "Canary of %s in namespace %s: %s", st.Spec.Service, st.Namespace, st.Phase)
	switch {
	case st.Phase == Progressing:
		fmt.Fprintf(w, ", step %d of %d, %s to %s", st.Step+1, len(st.Spec.Steps), DescribeSplit(st.Split()), st.Canary)
	case st.Phase.Done() || st.Reason != "":
		fmt.Fprintf(w, ": %s", st.Reason)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  Image:      %s (stable: %s, in deployment %s)\n", st.Spec.Image, st.StableImage, st.Stable)
	fmt.Fprintf(w, "  Route:      %s, steps %s, every %s\n", st.Route, joinSteps(st.Spec.Steps), time.Duration(st.Spec.Interval))
	if m := st.Spec.match(); m != nil {
		fmt.Fprintf(w, "  Match:      %s go to the canary at every step\n", m.Describe())
	}
	fmt.Fprintf(w, "  Thresholds: error rate at most %s, p99 at most %s, at least %d requests per interval (metrics: %s at %s)\n",
		Percent(st.Spec.MaxErrorRate), time.Duration(st.Spec.MaxP99), st.Spec.MinRequests, st.Spec.Metrics, st.Spec.Prometheus)
	for _, c := range st.Spec.Custom {
		fmt.Fprintf(w, "  Check:      %s: %s\n", c.Name, c.Expr)
	}
	fmt.Fprintf(w, "  Started:    %s by %s\n", st.Started.Local().Format(time.DateTime), st.StartedBy)
	if !st.Phase.Done() {
		switch {
		case holder.Holds(now, host):
			fmt.Fprintf(w, "  Driven by:  %s since %s, lease renewed %s ago\n", holder, holder.Since.Local().Format(time.TimeOnly),
				now.Sub(holder.Renewed).Round(time.Second))
		default:
			fmt.Fprintf(w, "  Driven by:  nobody: it keeps %s until `tunnel canary resume %s` (or abort)\n", DescribeSplit(st.Split()), st.Spec.Service)
		}
	}
	if n := len(st.Checks); n > 0 {
		c := st.Checks[n-1]
		fmt.Fprintf(w, "  Last check: %s at step %d: %s\n              canary %s\n              stable %s\n",
			c.At.Local().Format(time.TimeOnly), c.Step+1, c.Verdict, c.Canary, c.Stable)
		for _, v := range c.Custom {
			fmt.Fprintf(w, "              %s\n", v)
		}
	}
}

func joinSteps(steps []int) string {
	s := make([]string, len(steps))
	for i, v := range steps {
		s[i] = fmt.Sprintf("%d%%", v)
		if i == 0 && v == MatchStep {
			s[i] = "match"
		}
	}
	return strings.Join(s, ",")
}

// printable drops control characters (escape sequences among them) but
// the newline from what it writes.
type printable struct{ w io.Writer }

func (p printable) Write(b []byte) (int, error) {
	_, err := io.WriteString(p.w, Printable(string(b), true))
	return len(b), err
}

// Printable is s without control characters; newlines stay when lines says.
func Printable(s string, lines bool) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && !(lines && r == '\n')) || (r >= 0x7f && r < 0xa0) {
			return -1
		}
		return r
	}, s)
}

// Summary is a canary's state on one line, for a log that follows it.
func Summary(st *State, holder *Driver) string {
	return Printable(summary(st, holder), false)
}

func summary(st *State, holder *Driver) string {
	var b strings.Builder
	b.WriteString(string(st.Phase))
	switch {
	case st.Phase == Progressing:
		fmt.Fprintf(&b, ": step %d of %d, %s", st.Step+1, len(st.Spec.Steps), DescribeSplit(st.Split()))
	case st.Reason != "":
		fmt.Fprintf(&b, ": %s", st.Reason)
	}
	host, _ := os.Hostname()
	if holder.Holds(time.Now(), host) {
		fmt.Fprintf(&b, "; driven by %s", holder)
	} else if !st.Phase.Done() {
		b.WriteString("; driven by nobody")
	}
	if n := len(st.Checks); n > 0 {
		c := st.Checks[n-1]
		fmt.Fprintf(&b, "; last check %s: %s", c.At.Local().Format(time.TimeOnly), c.Verdict)
	}
	return b.String()
}
