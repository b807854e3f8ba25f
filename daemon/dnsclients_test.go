package daemon

import (
	"net/netip"
	"testing"
	"time"
)

func TestDNSClients(t *testing.T) {
	now := time.Unix(1000, 0)
	machine := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}
	looks := 0
	forwards := false
	d := &dnsClients{
		addrs:    func() ([]netip.Addr, error) { looks++; return machine, nil },
		forwards: func(bool) bool { return forwards },
		cluster:  func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")} },
		now:      func() time.Time { return now },
	}
	for _, c := range []struct {
		from     string
		forwards bool
		want     bool
	}{
		{"127.0.0.1", false, true},
		{"::1", false, true},
		{"10.0.0.5", false, true},
		{"::ffff:10.0.0.5", false, true},
		{"fd00::5", false, true},
		{"192.168.1.20", false, false}, // a neighbour, the machine not forwarding
		{"192.168.1.20", true, true},   // a container the machine routes for
		{"10.96.3.4", true, false},     // the cluster, never
	} {
		forwards = c.forwards
		if got := d.allow(netip.MustParseAddr(c.from)); got != c.want {
			t.Errorf("allow(%s) forwarding=%v = %v, want %v", c.from, c.forwards, got, c.want)
		}
	}
	if looks != 1 {
		t.Errorf("looked at the machine's addresses %d times within a second, want once", looks)
	}

	// A new address is seen at its first query once a second has passed.
	forwards = false
	machine = append(machine, netip.MustParseAddr("10.0.0.6"))
	if d.allow(netip.MustParseAddr("10.0.0.6")) {
		t.Error("an address is looked up again within a second of the last look")
	}
	now = now.Add(localRefresh)
	if !d.allow(netip.MustParseAddr("10.0.0.6")) {
		t.Error("a new address of the machine is not answered after a second")
	}
	if d.allow(netip.Addr{}) {
		t.Error("an unknown source is answered")
	}
}
