//go:build !linux

package redirect

import "errors"

// Install needs Linux's nftables: the init container runs in a Linux pod.
func Install([]Port) error { return errors.New("tunnel-agent redirect runs in a Linux pod") }
