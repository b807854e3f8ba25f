// Command tunnel-agent: see package agent.
package main

import (
	"fmt"
	"os"

	"tunnel.dev/tunnel/agent"
)

func main() {
	if err := agent.New(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tunnel-agent:", err)
		os.Exit(1)
	}
}
