//go:build linux

package lab

import (
	"strconv"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{}, ""},
		{"other values", Config{PodCIDR: "10.112.0.0/16", ServiceCIDR: "10.113.0.0/20", ClusterDomain: "tunnel.test"}, ""},
		{"not a CIDR", Config{PodCIDR: "10.244.0.0"}, "pod CIDR"},
		{"IPv6 service CIDR", Config{ServiceCIDR: "fd00::/108"}, "service CIDR"},
		{"pod CIDR smaller than a node's /24", Config{PodCIDR: "10.244.0.0/25"}, "too small"},
		{"overlaps the lab", Config{PodCIDR: "10.208.0.0/16"}, "lab's own range"},
		{"pods overlap services", Config{PodCIDR: "10.96.0.0/12", ServiceCIDR: "10.96.0.0/16"}, "overlaps service CIDR"},
		{"domain with upper case", Config{ClusterDomain: "Cluster.Local"}, "cluster domain"},
		{"domain with a trailing dot", Config{ClusterDomain: "cluster.local."}, "cluster domain"},
		{"domain with empty label", Config{ClusterDomain: "a..b"}, "cluster domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Defaults().Validate()
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestServiceAddresses(t *testing.T) {
	c := Config{ServiceCIDR: "10.113.0.0/20"}.Defaults()
	if got := c.kubernetesServiceIP().String(); got != "10.113.0.1" {
		t.Errorf("kubernetes service IP = %s", got)
	}
	if got := c.DNSServiceIP().String(); got != "10.113.0.10" {
		t.Errorf("DNS service IP = %s", got)
	}
}

func TestSaveLoadConfig(t *testing.T) {
	p := Paths{State: t.TempDir()}
	if _, err := loadConfig(p); err != errNotUp {
		t.Fatalf("loadConfig on an empty state = %v, want errNotUp", err)
	}
	want := Config{PodCIDR: "10.112.0.0/16"}.Defaults()
	if err := saveConfig(p, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadConfig(p)
	if err != nil || got != want {
		t.Fatalf("loadConfig = %+v, %v; want %+v", got, err, want)
	}
}

// The registry's name in every image is the node's address and port.
func TestRegistryIsOnTheNode(t *testing.T) {
	if want := nodeAddr.String() + ":" + strconv.Itoa(registryPort); labRegistry != want {
		t.Errorf("labRegistry = %s, want %s", labRegistry, want)
	}
}
