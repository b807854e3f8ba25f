package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

func newQuit() *cobra.Command {
	return &cobra.Command{
		Use:   "quit",
		Short: "Disconnect and restore routes and DNS as they were",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, closeFn, err := daemonClient(cmd.Context())
			if errors.Is(err, errNoDaemon) {
				// No daemon: one may have died without restoring DNS, and
				// then its backup of resolv.conf is still in its run folder.
				if _, err := os.Stat(daemonpb.ResolvBackup(daemonpb.RunDir())); err != nil {
					fmt.Fprintln(cmd.OutOrStdout(), "Not connected.")
					return nil
				}
				done, err := repair()
				if err != nil {
					return err
				}
				if done == "" {
					done = "Nothing was left to repair.\n"
				}
				fmt.Fprint(cmd.OutOrStdout(), "Not connected. "+done)
				return nil
			}
			if err != nil {
				return err
			}
			defer closeFn()
			if _, err := c.Quit(cmd.Context(), &daemonpb.QuitRequest{}); err != nil {
				return errors.New(status.Convert(err).Message())
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Disconnected; routes and DNS restored.")
			return nil
		},
	}
}

// repair runs `tunnel daemon --repair`, as root, and returns what it says
// it repaired.
func repair() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(self, "daemon", "--repair")
	if os.Geteuid() != 0 {
		cmd = exec.Command("sudo", self, "daemon", "--repair")
	}
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("repair what a crashed daemon left: %v %s", err, out)
	}
	return string(out), nil
}
