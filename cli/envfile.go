package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/inject"
)

// writeEnv computes the workload's environment when something needs it
// (an env file, or a command to run) and writes the files asked for.
func writeEnv(ctx context.Context, cs kubernetes.Interface, plan *inject.Plan, f *interceptFlags) (map[string]string, error) {
	env, err := inject.Environment(ctx, cs, plan.Deployment, plan.Container)
	if err != nil {
		if f.envFile == "" && f.envJSON == "" {
			return nil, nil // only a command wanted it: it runs with ours
		}
		return nil, fmt.Errorf("read the workload's environment: %w", err)
	}
	if f.envFile != "" {
		if err := os.WriteFile(f.envFile, formatEnv(env, f.envSyntax), 0o600); err != nil {
			return nil, fmt.Errorf("write --env-file: %w", err)
		}
	}
	if f.envJSON != "" {
		if err := os.WriteFile(f.envJSON, formatEnv(env, "json"), 0o600); err != nil {
			return nil, fmt.Errorf("write --env-json: %w", err)
		}
	}
	return env, nil
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
			fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
		}
	default:
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%s\n", k, strings.ReplaceAll(env[k], "\n", `\n`))
		}
	}
	return []byte(b.String())
}
