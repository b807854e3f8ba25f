package dns

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzResolver feeds arbitrary messages to the handler: whatever a client
// sends, it must not panic, and any answer must carry the query's ID and
// question and pack. The seeds are in testdata/fuzz/FuzzResolver.
func FuzzResolver(f *testing.F) {
	z := newZone(f, clusterRecords...)
	cluster := exchangerFunc2(func(_ context.Context, q *mdns.Msg) (*mdns.Msg, error) {
		return z.answer(q, 30), nil
	})
	// No upstreams: names that would go upstream fail at once, with no traffic.
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	r := NewResolver(quiet, cluster, Config{Namespace: "demo", Include: []string{"corp.internal"}})
	r.SetNamespaces([]string{"demo", "shop"})
	r.SetClusterSubnets([]netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/64")})
	f.Cleanup(func() { r.Close() })

	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(mdns.Msg)
		if err := q.Unpack(b); err != nil {
			return
		}
		for _, tcp := range []bool{false, true} {
			w := &fakeWriter{tcp: tcp}
			r.ServeDNS(w, q.Copy())
			if n := r.panics.Load(); n != 0 {
				t.Fatalf("the handler panicked (%d recovered; see the log)", n)
			}
			if w.msg == nil {
				continue
			}
			if w.msg.Id != q.Id {
				t.Fatalf("answer ID %d, query ID %d", w.msg.Id, q.Id)
			}
			if len(q.Question) == 1 && q.Opcode == mdns.OpcodeQuery && (len(w.msg.Question) != 1 || w.msg.Question[0] != q.Question[0]) {
				t.Fatalf("answer question %v, query question %v", w.msg.Question, q.Question)
			}
		}
	})
}
