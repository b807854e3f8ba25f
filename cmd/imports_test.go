package cmd_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The layout's rules, checked: gVisor stays inside tun/netstack, and the CLI
// reaches the daemon only through its gRPC API, never by importing it.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "tunnel.dev/tunnel/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg, imports := f[0], f[1:]
		for _, imp := range imports {
			if strings.HasPrefix(imp, "gvisor.dev/") && pkg != "tunnel.dev/tunnel/tun/netstack" {
				t.Errorf("%s imports %s: only tun/netstack may use gVisor", pkg, imp)
			}
			if strings.HasPrefix(pkg, "tunnel.dev/tunnel/cli") && strings.HasPrefix(imp, "tunnel.dev/tunnel/daemon") {
				t.Errorf("%s imports %s: the CLI talks to the daemon over gRPC only", pkg, imp)
			}
		}
	}
}
