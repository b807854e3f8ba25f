package daemon

import (
	"fmt"
	"os"
)

// openLog opens the daemon's log for appending, 0600 whatever mode an
// older file had (it holds cluster names, users and addresses), inside
// runDir, made if missing; and on Unix makes it the process's stdout and
// stderr, so a panic lands in it too.
func openLog(runDir, path string) (*os.File, error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|noFollow, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the daemon's log: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	redirectOutput(f)
	return f, nil
}
