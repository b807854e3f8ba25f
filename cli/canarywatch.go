package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"tunnel.dev/tunnel/canary"
)

// watchEvery is how often `canary status --watch` reads the record.
const watchEvery = time.Second

// watchCanary follows one canary until it ends: on a terminal, its
// description redrawn in place; elsewhere (a pipe, a CI log), one line
// each time its phase, step, driver or last check changes. It returns nil
// when the canary is promoted, and the reason otherwise (or that watching
// stopped), so a script can wait on it.
func watchCanary(ctx context.Context, out io.Writer, store canary.Store, leases canary.Leases, service string) error {
	width, tty := terminalWidth(out)
	var lines int // drawn last time, to draw over
	last := ""
	for {
		st, err := store.Get(ctx, service)
		if err != nil {
			return err
		}
		holder, err := leases.Holder(ctx, service)
		if err != nil {
			return err
		}
		if tty {
			var b bytes.Buffer
			canary.Describe(&b, st, holder, time.Now())
			if lines > 0 {
				fmt.Fprintf(out, "\x1b[%dA\x1b[J", lines) // up, and clear to the end
			}
			_, _ = out.Write(b.Bytes())
			lines = screenLines(b.String(), width)
		} else if line := canary.Summary(st, holder); line != last {
			fmt.Fprintf(out, "%s %s\n", time.Now().Format(time.TimeOnly), line)
			last = line
		}
		if st.Phase.Done() {
			if st.Phase == canary.Promoted {
				return nil
			}
			return fmt.Errorf("the canary of %s is %s: %s", service, strings.ToLower(string(st.Phase)), st.Reason)
		}
		select {
		case <-ctx.Done():
			// Not the canary's end: a script must not read it as promoted.
			return fmt.Errorf("stopped watching; the canary of %s goes on", service)
		case <-time.After(watchEvery):
		}
	}
}

// terminalWidth says whether out is a terminal, and how wide.
func terminalWidth(out io.Writer) (int, bool) {
	f, ok := out.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	w, _, err := term.GetSize(int(f.Fd()))
	if err != nil || w <= 0 {
		w = 80
	}
	return w, true
}

// screenLines counts the rows text takes on a terminal width wide, with
// long lines wrapped.
func screenLines(text string, width int) int {
	n := 0
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		n += max(1, (utf8.RuneCountInString(l)+width-1)/width)
	}
	return n
}
