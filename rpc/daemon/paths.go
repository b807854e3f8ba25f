package daemon

import (
	"os"
	"path/filepath"
	"strings"
)

// AsUserVerb is the hidden verb of the tunnel binary that drops to a user's
// uid and gid and execs a command: the daemon runs a kubeconfig's exec
// credential plugin through it, never as root.
const AsUserVerb = "as-user"

// RunDir is where the daemon of this network namespace keeps its socket,
// lock, log and the state it needs to repair a crash. It is keyed by the
// namespace, so daemons of laptops sharing one filesystem (the lab's
// namespaces) never meet; TUNNEL_RUN_DIR overrides it.
func RunDir() string {
	if d := os.Getenv("TUNNEL_RUN_DIR"); d != "" {
		return d
	}
	id := "default"
	if link, err := os.Readlink("/proc/self/ns/net"); err == nil { // "net:[4026531840]"
		id = strings.Trim(strings.TrimPrefix(link, "net:"), "[]")
	}
	return filepath.Join("/run/tunnel", "netns-"+id)
}

// SocketPath is the gRPC socket of this namespace's daemon.
func SocketPath() string { return SocketIn(RunDir()) }

// SocketIn is the daemon's gRPC socket in a run folder: inside a folder of
// its own, which only the daemon's user (and group) may enter.
func SocketIn(runDir string) string { return filepath.Join(runDir, "socket", "daemon.sock") }

// ResolvBackup is where the daemon keeps the resolv.conf it replaced: while
// it exists, a daemon changed DNS and has not restored it (yet).
func ResolvBackup(runDir string) string { return filepath.Join(runDir, "resolv.conf.orig") }
