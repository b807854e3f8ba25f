// Command tunnel: see package cli.
package main

import (
	"fmt"
	"os"

	"tunnel.dev/tunnel/cli"
)

func main() {
	if err := cli.New(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tunnel:", err)
		os.Exit(1)
	}
}
