package dns

import (
	"slices"
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name, in    string
		wantNS      string // space-separated
		wantSearch  string
		wantOptions []string
	}{
		{"empty", "", "", "", nil},
		{"NetworkManager", nmResolvConf, "10.0.0.2 fe80::1%eth0", "corp.example.com lab.example.com", []string{"options ndots:2 timeout:1", "options edns0 trust-ad"}},
		{"comments and junk", "#nameserver 1.1.1.1\n;nameserver 2.2.2.2\nnameserver\nnameserver not-an-ip\nnameserver 3.3.3.3 extra\nbogus line\n", "3.3.3.3", "", nil},
		{"last of search and domain wins", "search a.example b.example\ndomain c.example.\n", "", "c.example", nil},
		{"search after domain", "domain c.example\nsearch a.example. b.example\n", "", "a.example b.example", nil},
		{"tabs, CRLF and indentation", "  nameserver\t10.0.0.9\r\n\toptions   rotate\r\n", "10.0.0.9", "", []string{"options   rotate"}},
		{"systemd-resolved stub", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", "127.0.0.53", "", []string{"options edns0 trust-ad"}},
	}
	for _, tt := range tests {
		rc := parseResolvConf([]byte(tt.in))
		var ns []string
		for _, a := range rc.nameservers {
			ns = append(ns, a.String())
		}
		if got := strings.Join(ns, " "); got != tt.wantNS {
			t.Errorf("%s: nameservers %q, want %q", tt.name, got, tt.wantNS)
		}
		if got := strings.Join(rc.search, " "); got != tt.wantSearch {
			t.Errorf("%s: search %q, want %q", tt.name, got, tt.wantSearch)
		}
		if !slices.Equal(rc.options, tt.wantOptions) {
			t.Errorf("%s: options %q, want %q", tt.name, rc.options, tt.wantOptions)
		}
	}
}

func TestFormatResolvConf(t *testing.T) {
	got := string(formatResolvConf(OSConfig{
		Nameservers:   addrs("198.18.0.53", "fd00::53"),
		SearchDomains: []string{"demo.svc.cluster.local.", "", ".", "example.com"},
	}, "/run/tunnel/resolv.conf.orig", []string{"options ndots:5"}))
	want := "# resolv.conf written by tunnel; the original is kept in /run/tunnel/resolv.conf.orig\n" +
		"nameserver 198.18.0.53\nnameserver fd00::53\n" +
		"search demo.svc.cluster.local example.com\n" +
		"options ndots:5\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if !hasMarker([]byte(got)) || hasMarker([]byte(nmResolvConf)) || hasMarker([]byte("\n"+got)) {
		t.Error("hasMarker is wrong")
	}
	// What we write, we read back.
	rc := parseResolvConf([]byte(got))
	if len(rc.nameservers) != 2 || len(rc.search) != 2 || len(rc.options) != 1 {
		t.Errorf("parsed back %+v", rc)
	}
}
