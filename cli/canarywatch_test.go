package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"tunnel.dev/tunnel/canary"
)

// Off a terminal, --watch writes one line per change and ends with the
// canary: nil when promoted.
func TestWatchCanaryWritesALinePerChange(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	store := canary.Store{CS: cs, Namespace: "ns"}
	st := &canary.State{Spec: canary.Spec{Service: "shop", Steps: []int{canary.MatchStep, 50}, Match: "header:x-beta=1"},
		Canary: "shop-canary", Phase: canary.Progressing}
	if err := store.Create(ctx, st); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(1500 * time.Millisecond)
		_ = store.Update(ctx, "shop", func(s *canary.State) error { s.Step = 1; return nil })
		time.Sleep(1500 * time.Millisecond)
		_ = store.Update(ctx, "shop", func(s *canary.State) error { s.Phase, s.Reason = canary.Promoted, "every step was healthy"; return nil })
	}()
	var out bytes.Buffer
	if err := watchCanary(ctx, &out, store, canary.Leases{CS: cs, Namespace: "ns"}, "shop"); err != nil {
		t.Fatalf("watch: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"Progressing: step 1 of 2, requests with header x-beta=1; driven by nobody",
		"Progressing: step 2 of 2, 50% of traffic and requests with header x-beta=1; driven by nobody",
		"Promoted: every step was healthy",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, l := range lines {
		if !strings.HasSuffix(l, want[i]) {
			t.Errorf("line %d: %q, want it to end %q", i+1, l, want[i])
		}
	}
}

func TestScreenLinesCountsWrappedLines(t *testing.T) {
	if n := screenLines("short\n"+strings.Repeat("x", 81)+"\n\n", 80); n != 4 {
		t.Errorf("screenLines = %d, want 4 (1 + 2 wrapped + 1 empty)", n)
	}
}
