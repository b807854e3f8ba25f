// Command gen writes tunnel's dashboards as JSON into the current folder
// (go generate runs it in dashboards/).
package main

import (
	"fmt"
	"os"

	"tunnel.dev/tunnel/dashboards"
)

func main() {
	files, err := dashboards.Files()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
