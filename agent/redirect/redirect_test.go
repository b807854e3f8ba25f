//go:build linux

package redirect

import (
	"os"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	ps, err := Parse([]string{"8080=18100", "5432=18101"})
	if err != nil || len(ps) != 2 || ps[0] != (Port{8080, 18100}) || ps[1] != (Port{5432, 18101}) {
		t.Errorf("Parse = %v, %v", ps, err)
	}
	for _, bad := range [][]string{nil, {"8080"}, {"8080=x"}, {"0=1"}, {"70000=1"}} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) took it", bad)
		}
	}
}

// Installed twice (an init container restarted), the table holds one rule
// per port, in a network namespace of the test's own.
func TestInstallInANetworkNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace (make test runs as root)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		ports := []Port{{8080, 18100}, {5432, 18101}}
		for range 2 {
			if err := Install(ports); err != nil {
				t.Errorf("Install: %v", err)
				return
			}
		}
		c, err := nftables.New()
		if err != nil {
			t.Error(err)
			return
		}
		tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: "prerouting", Table: tbl})
		if err != nil || len(rules) != len(ports) {
			t.Errorf("rules after two installs: %d, %v; want %d", len(rules), err, len(ports))
		}
	}()
	<-done
}
