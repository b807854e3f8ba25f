// Command tunnel: the CLI (package cli) and, as `tunnel daemon`, the
// privileged daemon (package daemon) in one binary.
package main

import (
	"fmt"
	"os"

	"tunnel.dev/tunnel/cli"
	"tunnel.dev/tunnel/daemon"
)

func main() {
	root := cli.New(os.Stdout, os.Stderr)
	root.AddCommand(daemon.Command())
	if err := root.Execute(); err != nil {
		if code, ok := cli.CommandExit(err); ok {
			os.Exit(code) // the intercepted command's own exit: it has spoken
		}
		fmt.Fprintln(os.Stderr, "tunnel:", err)
		os.Exit(1)
	}
}
