//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

// A laptop whose names go through systemd-resolved, as on most desktop
// Linux: connect leaves resolv.conf alone and gives resolved our resolver
// for the cluster's names only, on the TUN link; quit (the link gone)
// leaves resolved as it was.
func TestConnectWithSystemdResolved(t *testing.T) {
	installManager(t)
	ns := h.Namespace(t)
	h.DeployEcho(t, ns, "echo", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := lab.StartResolved(ctx, h.Lab.Paths, "rosa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })

	l := newLaptop(t, "rosa", "admin")
	l.opt.Env = []string{"DBUS_SYSTEM_BUS_ADDRESS=" + r.Bus}
	resolvConf := "/etc/netns/tlab-laptop-rosa/resolv.conf"
	link0, _ := os.Readlink(resolvConf)
	before := l.resolvConf()
	settings := func() string { // what resolved is configured with, per link
		t.Helper()
		dns, err1 := r.Resolvectl(ctx, "dns")
		domains, err2 := r.Resolvectl(ctx, "domain")
		if err1 != nil || err2 != nil {
			t.Fatalf("resolvectl: %v %v\n%s\n%s", err1, err2, dns, domains)
		}
		return dns + domains
	}
	settingsBefore := settings()

	l.must("connect", "-n", ns)
	// resolv.conf stays resolved's: we never write it (resolved adds our
	// search domains to it itself).
	if link, err := os.Readlink(resolvConf); err != nil || link != link0 {
		t.Errorf("resolv.conf is no longer resolved's stub file: %q %v", link, err)
	}
	var st struct {
		DNS struct {
			Mode string `json:"mode"`
		} `json:"dns"`
	}
	raw := l.must("status", "-o", "json")
	if err := json.Unmarshal([]byte(raw), &st); err != nil || st.DNS.Mode != "systemd-resolved" {
		t.Errorf("status: mode %q (%v)\n%s", st.DNS.Mode, err, raw)
	}
	link, err := r.Resolvectl(ctx, "status", "tunnel0")
	if err != nil || !strings.Contains(link, "198.18.0.53") || !strings.Contains(link, "~"+ns) || !strings.Contains(link, "svc.cluster.local") {
		t.Errorf("resolved's view of tunnel0: %v\n%s", err, link)
	}

	domain := h.Config.ClusterDomain
	for what, script := range map[string]string{
		"full name":       fmt.Sprintf("curl -sS --max-time 10 http://echo.%s.svc.%s/full", ns, domain),
		"namespaced name": fmt.Sprintf("curl -sS --max-time 10 http://echo.%s/ns", ns),
		"short name":      "curl -sS --max-time 10 http://echo/short",
	} {
		if out, err := l.sh(script); err != nil || !strings.Contains(out, "pod=echo-") {
			t.Errorf("%s through systemd-resolved: %v\n%s", what, err, out)
		}
	}
	svcIP := serviceIP(t, ns, "echo")
	if out, err := l.sh("dig +short -x " + svcIP); err != nil || !strings.Contains(out, fmt.Sprintf("echo.%s.svc.%s.", ns, domain)) {
		t.Errorf("PTR of the service address through systemd-resolved: %v\n%s", err, out)
	}
	// Other names still go to resolved's own server, not to us.
	if out, err := l.sh("dig +short upstream.lab.test"); err != nil || strings.TrimSpace(out) != "10.209.0.1" {
		t.Errorf("a name outside the cluster: %v\n%s", err, out)
	}

	l.must("quit")
	if after := l.resolvConf(); after != before {
		t.Errorf("quit changed resolv.conf:\n%s", after)
	}
	if out, _ := r.Resolvectl(ctx, "status", "tunnel0"); !strings.Contains(out, "No such device") {
		t.Errorf("resolved still has the link after quit:\n%s", out)
	}
	if after := settings(); after != settingsBefore {
		t.Errorf("resolved's settings changed:\nbefore:\n%s\nafter:\n%s", settingsBefore, after)
	}
	if out, err := l.sh("dig +short upstream.lab.test"); err != nil || strings.TrimSpace(out) != "10.209.0.1" {
		t.Errorf("after quit: %v\n%s", err, out)
	}
}
