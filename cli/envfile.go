package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/inject"
)

// writeEnv computes the workload's environment when something needs it
// (an env file, or a command to run) and writes the files asked for.
func writeEnv(ctx context.Context, cs kubernetes.Interface, plan *inject.Plan, f *interceptFlags, errOut io.Writer) (map[string]string, error) {
	env, err := inject.Environment(ctx, cs, plan.Workload, plan.Container)
	if err != nil {
		if f.envFile == "" && f.envJSON == "" {
			return nil, nil // only a command wanted it: it runs with ours
		}
		return nil, fmt.Errorf("read the workload's environment: %w", err)
	}
	if !f.envAll {
		if dropped := dropRunVars(env); len(dropped) > 0 {
			fmt.Fprintf(errOut, "Left out of the workload's environment, since they change how this machine runs programs: %s (--env-all keeps them).\n", strings.Join(dropped, ", "))
		}
	}
	if f.envFile != "" {
		if err := writePrivate(f.envFile, formatEnv(env, f.envSyntax)); err != nil {
			return nil, fmt.Errorf("write --env-file: %w", err)
		}
	}
	if f.envJSON != "" {
		if err := writePrivate(f.envJSON, formatEnv(env, "json")); err != nil {
			return nil, fmt.Errorf("write --env-json: %w", err)
		}
	}
	return env, nil
}

// runVars change how the laptop runs programs (its shell, loader,
// interpreters): a workload's value must not take over the developer's
// machine. Names with these prefixes count too.
var (
	runVars = map[string]bool{
		"PATH": true, "HOME": true, "SHELL": true, "IFS": true, "ENV": true, "BASH_ENV": true,
		"SHELLOPTS": true, "BASHOPTS": true, "PS4": true, "PROMPT_COMMAND": true, "CDPATH": true,
		"NODE_OPTIONS": true, "NODE_PATH": true, "PYTHONSTARTUP": true, "PYTHONPATH": true, "PYTHONHOME": true,
		"PYTHONINSPECT": true, "PERL5OPT": true, "PERL5LIB": true, "PERLLIB": true, "RUBYOPT": true, "RUBYLIB": true,
		"JAVA_TOOL_OPTIONS": true, "_JAVA_OPTIONS": true, "JDK_JAVA_OPTIONS": true, "CLASSPATH": true,
		"GIT_SSH_COMMAND": true, "GIT_SSH": true, "GIT_EXEC_PATH": true, "GIT_CONFIG_GLOBAL": true,
		"EDITOR": true, "VISUAL": true, "PAGER": true, "GCONV_PATH": true, "HOSTALIASES": true,
		"LOCALDOMAIN": true, "RES_OPTIONS": true, "TMPDIR": true, "KUBECONFIG": true, "SSH_AUTH_SOCK": true,
		"GOFLAGS": true, "NPM_CONFIG_PREFIX": true,
	}
	runVarPrefixes = []string{"LD_", "DYLD_", "GIT_CONFIG_"}
)

func isRunVar(k string) bool {
	if runVars[k] {
		return true
	}
	for _, p := range runVarPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// dropRunVars deletes the run variables from env and names them, sorted.
func dropRunVars(env map[string]string) []string {
	var dropped []string
	for k := range env {
		if isRunVar(k) {
			dropped = append(dropped, k)
			delete(env, k)
		}
	}
	slices.Sort(dropped)
	return dropped
}

// writePrivate writes data to path, 0600, through a temporary file in the
// same folder and a rename: an existing file keeps neither its mode nor,
// if it is a symlink, its target (the link itself is replaced).
func writePrivate(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// shellName says whether k can be a shell variable's name.
func shellName(k string) bool {
	for i, c := range k {
		if c != '_' && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return k != ""
}

// formatEnv writes env in a syntax: docker (KEY=VALUE lines, as `docker run
// --env-file` reads them), sh (export KEY='VALUE', quoted for any value) or
// json (one object).
func formatEnv(env map[string]string, syntax string) []byte {
	keys := slices.Sorted(maps.Keys(env))
	var b strings.Builder
	switch syntax {
	case "json":
		out, _ := json.MarshalIndent(env, "", "  ") // a map of strings always marshals
		return append(out, '\n')
	case "sh":
		for _, k := range keys {
			if !shellName(k) { // "export a-b=..." would be a command, not a variable
				continue
			}
			fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
		}
	default:
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%s\n", k, strings.ReplaceAll(env[k], "\n", `\n`))
		}
	}
	return []byte(b.String())
}
