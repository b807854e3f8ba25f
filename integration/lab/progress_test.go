//go:build linux

package lab

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	var b strings.Builder
	p := newProgress(&b)
	clock := time.Unix(0, 0)
	p.now = func() time.Time { return clock }

	done := p.step("start the node")
	clock = clock.Add(3 * time.Second)
	done(nil)
	done = p.step("quick step")
	done(nil) // quick steps say nothing more
	done = p.long(context.Background(), "build")
	clock = clock.Add(time.Minute)
	done(errors.New("boom"))

	want := "==> start the node\n    done in 3s\n==> quick step\n==> build\n    failed after 1m0s\n"
	if b.String() != want {
		t.Fatalf("progress printed %q, want %q", b.String(), want)
	}
}
