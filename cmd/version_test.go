// Package cmd_test checks the built binaries, as a user runs them.
package cmd_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Both binaries report the version the build stamps into them.
func TestBinariesPrintTheirBuildVersion(t *testing.T) {
	const stamp = "v9.9.9-test"
	dir := t.TempDir()
	for _, name := range []string{"tunnel", "tunnel-agent"} {
		bin := filepath.Join(dir, name)
		build := exec.Command("go", "build", "-ldflags", "-X tunnel.dev/tunnel/version.version="+stamp, "-o", bin, "./"+name)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
		out, err := exec.Command(bin, "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), name+" "+stamp+" ") {
			t.Errorf("%s version printed %q (%v), want it to start with %q", name, out, err, name+" "+stamp)
		}
		out, err = exec.Command(bin, "version", "-o", "json").Output()
		if err != nil || !strings.Contains(string(out), `"version": "`+stamp+`"`) {
			t.Errorf("%s version -o json printed %q (%v)", name, out, err)
		}
		out, err = exec.Command(bin, "nonsense").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "unknown command") {
			t.Errorf("%s nonsense: %v %q", name, err, out)
		}
	}
}
