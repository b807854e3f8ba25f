package dns

import (
	"os"
	"testing"
)

func TestNewOSConfiguratorPicksDirectForAPlainFile(t *testing.T) {
	m := newMachine(t)
	os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
	c, err := NewOSConfigurator(testLogger(t), m.path, m.backup, "tunnel0")
	if err != nil {
		t.Fatal(err)
	}
	d, ok := c.(*Direct)
	if !ok {
		t.Fatalf("got %T, want *Direct", c)
	}
	if _, ok := c.(Repairer); !ok {
		t.Error("*Direct is not a Repairer")
	}
	if err := d.SetDNS(ourConfig); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, m.path).data; got != nmResolvConf {
		t.Errorf("restored:\n%s", got)
	}
}
