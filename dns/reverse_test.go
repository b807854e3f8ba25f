package dns

import (
	"net/netip"
	"testing"
)

func TestReverseZone(t *testing.T) {
	for in, want := range map[string]string{
		"10.96.0.0/16":   "96.10.in-addr.arpa",
		"10.244.0.0/24":  "0.244.10.in-addr.arpa",
		"10.112.0.0/12":  "10.in-addr.arpa",
		"192.168.1.7/32": "7.1.168.192.in-addr.arpa",
		"0.0.0.0/0":      "in-addr.arpa",
		"fd00::/8":       "d.f.ip6.arpa",
		"fd00:10::/32":   "0.1.0.0.0.0.d.f.ip6.arpa",
		"fd00:10::/30":   "1.0.0.0.0.d.f.ip6.arpa",
	} {
		if got := ReverseZone(netip.MustParsePrefix(in)); got != want {
			t.Errorf("ReverseZone(%s) = %s, want %s", in, got, want)
		}
	}
}
