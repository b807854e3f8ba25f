package tun

import (
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNewNetns runs f on a thread of its own in a fresh network namespace,
// so the test changes nothing of the machine's.
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and a TUN device (CI runs as root)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		f()
	}()
	<-done
}

func deviceRoutes(t *testing.T, name string) []netip.Prefix {
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.Scope != netlink.SCOPE_LINK || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		out = append(out, netip.PrefixFrom(a, ones))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func TestRouterKeepsRoutesEqualToTheSet(t *testing.T) {
	inNewNetns(t, func() {
		dev, err := Create("tuntest0", DefaultMTU)
		if err != nil {
			t.Error(err)
			return
		}
		defer dev.Close()
		r, err := NewRouter(slog.New(slog.DiscardHandler), "tuntest0")
		if err != nil {
			t.Error(err)
			return
		}
		if err := r.AddAddress(netip.MustParsePrefix("198.18.0.53/32"), false); err != nil {
			t.Error(err)
		}
		want := prefixes("10.96.0.0/16", "10.244.0.0/24")
		if err := r.Set(want); err != nil {
			t.Error(err)
		}
		if got := deviceRoutes(t, "tuntest0"); !slices.Equal(got, want) {
			t.Errorf("routes = %v, want %v", got, want)
		}
		if err := r.Set(prefixes("10.244.0.0/24", "10.245.0.0/24")); err != nil {
			t.Error(err)
		}
		if got := deviceRoutes(t, "tuntest0"); !slices.Equal(got, prefixes("10.244.0.0/24", "10.245.0.0/24")) {
			t.Errorf("after a change, routes = %v", got)
		}
		sys, err := SystemRoutes()
		if err != nil || !slices.ContainsFunc(sys, func(r Route) bool { return r.Device == "tuntest0" }) {
			t.Errorf("SystemRoutes = %v, %v: the device's routes are missing", sys, err)
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
		if got := deviceRoutes(t, "tuntest0"); len(got) != 0 {
			t.Errorf("routes left after Close: %v", got)
		}
	})
}
