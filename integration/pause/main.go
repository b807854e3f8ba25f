// Command pause is the cluster's sandbox (pause) image program: it holds the
// pod's namespaces open and exits 0 on SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As PID 1 the kernel ignores signals without a handler, so the
	// handlers must be installed explicitly or the pod hangs on stop.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
