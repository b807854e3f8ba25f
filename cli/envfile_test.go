package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A workload's environment cannot take over how the laptop runs programs.
func TestDropRunVars(t *testing.T) {
	env := map[string]string{"PATH": "/evil", "LD_PRELOAD": "/x.so", "BASH_ENV": "/tmp/x", "NODE_OPTIONS": "--require /x",
		"DYLD_INSERT_LIBRARIES": "x", "DATABASE_URL": "postgres://db", "PATHOLOGY": "ok"}
	dropped := dropRunVars(env)
	if want := []string{"BASH_ENV", "DYLD_INSERT_LIBRARIES", "LD_PRELOAD", "NODE_OPTIONS", "PATH"}; !slices.Equal(dropped, want) {
		t.Errorf("dropped %v, want %v", dropped, want)
	}
	if len(env) != 2 || env["DATABASE_URL"] == "" || env["PATHOLOGY"] == "" {
		t.Errorf("kept %v", env)
	}
}

// In sh syntax a key that is no shell name is left out: sourcing the file
// must never run a command.
func TestShSyntaxSkipsKeysThatAreNoNames(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	env := map[string]string{"GOOD": "1", "a-b": "x", "x;touch /tmp/pwned": "y", "9LIVES": "z", "_ok2": "2"}
	out := string(formatEnv(env, "sh"))
	if strings.Contains(out, "a-b") || strings.Contains(out, "pwned") || strings.Contains(out, "9LIVES") {
		t.Errorf("sh syntax kept a key that is no name:\n%s", out)
	}
	if !strings.Contains(out, "export GOOD='1'") || !strings.Contains(out, "export _ok2='2'") {
		t.Errorf("sh syntax lost a good key:\n%s", out)
	}
}

// Env files are 0600 whatever was there, and a symlink in their place is
// replaced, not followed.
func TestWritePrivate(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "old.env")
	if err := os.WriteFile(old, []byte("X=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.env")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{old, link, filepath.Join(dir, "new.env")} {
		if err := writePrivate(p, []byte("SECRET=1\n")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode() != 0o600 {
			t.Errorf("%s: mode %v %v, want a 0600 regular file", p, fi.Mode(), err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "untouched" {
		t.Errorf("the symlink's target was written: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
