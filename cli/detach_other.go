//go:build !unix

package cli

import "os/exec"

// detach: on other systems the started process already outlives the CLI.
func detach(*exec.Cmd) {}
