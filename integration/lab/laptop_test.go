//go:build linux

package lab

import (
	"context"
	"strings"
	"testing"
)

func TestLaptopAddressing(t *testing.T) {
	p := Paths{State: t.TempDir()}
	alice, err := laptopFor(p, "alice")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := laptopFor(p, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if alice.Gw.String() != "10.210.0.1" || alice.Addr.String() != "10.210.0.2" {
		t.Errorf("alice = %+v, want the first /30", alice)
	}
	if bob.Gw.String() != "10.210.0.5" || bob.Addr.String() != "10.210.0.6" {
		t.Errorf("bob = %+v, want the second /30", bob)
	}
	again, _ := laptopFor(p, "alice")
	if again != alice {
		t.Errorf("alice moved: %+v then %+v", alice, again)
	}
	if alice.Netns != "tlab-laptop-alice" || alice.ResolvConf() != "/etc/netns/tlab-laptop-alice/resolv.conf" {
		t.Errorf("alice's namespace and resolv.conf: %s %s", alice.Netns, alice.ResolvConf())
	}
}

func TestLaptopNames(t *testing.T) {
	p := Paths{State: t.TempDir()}
	for _, bad := range []string{"", "Alice", "1st", "a-b", "averyverylongname", "../x"} {
		if _, err := laptopFor(p, bad); err == nil {
			t.Errorf("laptop name %q accepted", bad)
		}
	}
}

func TestCommandNeedsArgsAndKnownUser(t *testing.T) {
	p := Paths{State: t.TempDir()}
	if _, err := Command(context.Background(), p, ExecOptions{}); err == nil {
		t.Error("Command with no argv succeeded")
	}
	_, err := Command(context.Background(), p, ExecOptions{User: "root"}, "true")
	if err == nil || !strings.Contains(err.Error(), "unknown user") {
		t.Errorf("Command with user root: %v", err)
	}
}
