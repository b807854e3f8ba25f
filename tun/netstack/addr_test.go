package netstack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestAddrConversions(t *testing.T) {
	for _, s := range []string{"10.96.0.10:80", "[fd00::1]:53", "198.18.0.53:53", "[::ffff:10.0.0.1]:443"} {
		ap := netip.MustParseAddrPort(s)
		fa, _ := fullAddr(ap)
		got := addrPort(fa.Addr, fa.Port)
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if got != want {
			t.Errorf("%s: round trip gave %s, want %s", s, got, want)
		}
	}
	mapped := tcpip.AddrFromSlice(netip.MustParseAddr("::ffff:10.0.0.1").AsSlice())
	if got := addrPort(mapped, 1); got != netip.MustParseAddrPort("10.0.0.1:1") {
		t.Errorf("mapped address became %s, want 10.0.0.1:1", got)
	}
}

func TestUnicast(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"10.96.0.10", true},
		{"fd00::10", true},
		{"224.0.0.251", false},
		{"ff02::fb", false},
		{"255.255.255.255", false},
		{"0.0.0.0", false},
		{"::", false},
	} {
		if got := unicast(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("unicast(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
