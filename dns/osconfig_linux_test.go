package dns

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
)

func TestDetectConfiguratorResolvedIsAStub(t *testing.T) {
	_, err := DetectConfigurator(slog.New(slog.DiscardHandler), DetectEnv{
		ResolvConf:      func() ([]byte, error) { return []byte("nameserver 127.0.0.53\n"), nil },
		ResolvedRunning: func() bool { return true },
		NewResolved:     func() (OSConfigurator, error) { return NewResolved(nil) },
	})
	if !errors.Is(err, ErrResolvedUnsupported) || !strings.Contains(err.Error(), "systemd-resolved is not supported yet") {
		t.Errorf("err = %v, want ErrResolvedUnsupported", err)
	}
}

func TestNewOSConfiguratorPicksDirectForAPlainFile(t *testing.T) {
	m := newMachine(t)
	os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
	c, err := NewOSConfigurator(testLogger(t), m.path, m.backup)
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
