package dns

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// named is a configurator that only says which one it is.
type named struct {
	NoopConfigurator
	mode string
}

func TestDetectConfigurator(t *testing.T) {
	tests := []struct {
		name       string
		resolvConf string
		readErr    error
		resolved   bool
		want       string
		wantLog    string
	}{
		{"plain file", "nameserver 10.0.0.2\n", nil, true, ModeDirect,
			`mode=direct reason="resolv.conf names [10.0.0.2], not systemd-resolved's stub"`},
		{"stub with resolved running", "nameserver 127.0.0.53\noptions edns0\n", nil, true, ModeResolved,
			`mode=systemd-resolved reason="resolv.conf names 127.0.0.53 and systemd-resolved is running"`},
		{"stub without resolved", "nameserver 127.0.0.53\n", nil, false, ModeDirect,
			`mode=direct reason="resolv.conf names 127.0.0.53 but systemd-resolved is not running"`},
		{"resolved running, file not using it", "nameserver 192.168.1.1\n", nil, true, ModeDirect,
			`mode=direct reason="resolv.conf names [192.168.1.1], not systemd-resolved's stub"`},
		{"our own file after a crash", string(formatResolvConf(ourConfig, "/b", nil)), nil, true, ModeDirect,
			`mode=direct reason="resolv.conf was written by tunnel; restoring it first"`},
		{"stub, resolved running, no configurator for it", "nameserver 127.0.0.53\n", nil, true, ModeDirect,
			`mode=direct reason="systemd-resolved is running but not supported yet; replacing resolv.conf (its stub stays the upstream)"`},
		{"unreadable", "", errors.New("permission denied"), true, ModeDirect,
			`mode=direct reason="cannot read resolv.conf (permission denied)"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			env := DetectEnv{
				ResolvConf:      func() ([]byte, error) { return []byte(tt.resolvConf), tt.readErr },
				ResolvedRunning: func() bool { return tt.resolved },
				NewDirect:       func() (OSConfigurator, error) { return named{mode: ModeDirect}, nil },
				NewResolved:     func() (OSConfigurator, error) { return named{mode: ModeResolved}, nil },
			}
			if strings.Contains(tt.name, "no configurator") {
				env.NewResolved = nil
			}
			c, err := DetectConfigurator(logger, env)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.(named).mode; got != tt.want {
				t.Errorf("chose %s, want %s", got, tt.want)
			}
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			want := `level=INFO msg="dns: chose how to configure the OS resolver" subsystem=dns ` + tt.wantLog
			if len(lines) != 1 || lines[0] != want {
				t.Errorf("log:\n%s\nwant one line:\n%s", buf.String(), want)
			}
		})
	}
}
