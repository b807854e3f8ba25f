package manager

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadResolvConf(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		servers    []string
		domain     string
		wantErr    string
	}{
		{
			name:    "kubelet",
			text:    "search tunnel-system.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
			servers: []string{"10.96.0.10:53"},
			domain:  "cluster.local",
		},
		{
			name:    "custom domain, two servers, dual stack",
			text:    "nameserver fd00:10:96::a\nnameserver 10.96.0.10\nsearch ns.svc.corp.example svc.corp.example.\n",
			servers: []string{"[fd00:10:96::a]:53", "10.96.0.10:53"},
			domain:  "corp.example",
		},
		{
			name:    "ports, for tests",
			text:    "search svc.cluster.test\nnameserver 127.0.0.1:5353\nnameserver [::1]:5354\n",
			servers: []string{"127.0.0.1:5353", "[::1]:5354"},
			domain:  "cluster.test",
		},
		{
			name:    "no svc entry",
			text:    "search example.com\nnameserver 1.1.1.1\n",
			servers: []string{"1.1.1.1:53"},
			domain:  "",
		},
		{name: "no nameserver", text: "search svc.cluster.local\n", wantErr: "no nameserver"},
		{name: "host name", text: "nameserver dns.example.com\n", wantErr: "not an IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := readResolvConf(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v, want one naming %s and saying %q", err, path, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []netip.AddrPort
			for _, s := range tc.servers {
				want = append(want, netip.MustParseAddrPort(s))
			}
			if !slices.Equal(r.servers, want) || r.domain != tc.domain {
				t.Errorf("got %v %q, want %v %q", r.servers, r.domain, want, tc.domain)
			}
		})
	}
}

func TestReadResolvConfMissing(t *testing.T) {
	if _, err := readResolvConf(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("a missing file was accepted")
	}
}

func TestNewNeedsResolvConfAndSource(t *testing.T) {
	logger := testLogger(t)
	if _, err := New(logger, NewStaticSource(Cluster{}), Config{ResolvConf: filepath.Join(t.TempDir(), "nope")}); err == nil {
		t.Error("New without a resolv.conf succeeded")
	}
	if _, err := New(logger, nil, Config{ResolvConf: writeResolvConf(t, "10.96.0.10")}); err == nil {
		t.Error("New without a cluster source succeeded")
	}
}

func TestConfigDefaults(t *testing.T) {
	d := Config{}.withDefaults()
	if d.Listen != ":8022" || d.MetricsAddr != ":9090" || d.ResolvConf != "/etc/resolv.conf" ||
		d.DialTimeout <= 0 || d.UDPIdleTimeout.Seconds() != 60 || d.HeaderTimeout <= 0 || d.KeepAlive <= 0 ||
		d.DNSTimeout <= 0 || d.AllowLoopback {
		t.Errorf("defaults %+v", d)
	}
	if c := (Config{Listen: ":1", DialTimeout: 3}).withDefaults(); c.Listen != ":1" || c.DialTimeout != 3 {
		t.Errorf("set fields overridden: %+v", c)
	}
}
