//go:build unix

package cli

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

// newAsUser is how the root daemon runs a kubeconfig's exec credential
// plugin: as the user who connected, with that user's HOME, never as root.
func newAsUser() *cobra.Command {
	return &cobra.Command{
		Use:                daemonpb.AsUserVerb + " UID GID -- COMMAND ARGS...",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 4 || args[2] != "--" {
				return fmt.Errorf("usage: %s UID GID -- COMMAND ARGS", daemonpb.AsUserVerb)
			}
			uid, err1 := strconv.Atoi(args[0])
			gid, err2 := strconv.Atoi(args[1])
			if err1 != nil || err2 != nil {
				return fmt.Errorf("uid and gid must be numbers")
			}
			bin, err := exec.LookPath(args[3])
			if err != nil {
				return err
			}
			env := os.Environ()
			if u, err := user.LookupId(args[0]); err == nil {
				env = append(env, "HOME="+u.HomeDir, "USER="+u.Username)
			}
			if err := syscall.Setgroups([]int{gid}); err != nil {
				return fmt.Errorf("drop groups: %w", err)
			}
			if err := syscall.Setgid(gid); err != nil {
				return fmt.Errorf("set gid %d: %w", gid, err)
			}
			if err := syscall.Setuid(uid); err != nil {
				return fmt.Errorf("set uid %d: %w", uid, err)
			}
			return syscall.Exec(bin, args[3:], env)
		},
	}
}
