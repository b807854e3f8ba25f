package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

// daemonClient reaches the daemon of this network namespace, if one runs.
func daemonClient(ctx context.Context) (daemonpb.DaemonClient, func(), error) {
	sock := daemonpb.SocketPath()
	// A plain dial first tells "nobody listens" from "not yours": gRPC
	// would report both as unavailable.
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return nil, nil, fmt.Errorf("the tunnel daemon here (%s) belongs to another user: run tunnel as that user, or ask them to quit", sock)
	case err != nil:
		return nil, nil, errNoDaemon
	}
	conn.Close()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	c := daemonpb.NewDaemonClient(cc)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.Status(ctx, &daemonpb.StatusRequest{}, grpc.WaitForReady(false)); err != nil {
		cc.Close()
		return nil, nil, errNoDaemon
	}
	return c, func() { cc.Close() }, nil
}

var errNoDaemon = errors.New("no tunnel daemon runs")

// startDaemon starts `tunnel daemon` for this user: directly when root,
// through sudo otherwise (which may ask for a password), and waits until it
// answers.
func startDaemon(ctx context.Context, errOut io.Writer) (daemonpb.DaemonClient, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	runDir := daemonpb.RunDir()
	uid, gid := os.Getuid(), os.Getgid()
	logPath := filepath.Join(runDir, "daemon.log")
	// The daemon opens its own log (0600, as root): nothing here, and no
	// shell, sees a path or argument as anything but one word.
	args := []string{self, "daemon", "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid), "--log-file", logPath}
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command(args[0], args[1:]...)
		detach(cmd)
	} else {
		if _, err := exec.LookPath("sudo"); err != nil {
			return nil, nil, fmt.Errorf("tunnel needs root for its daemon and there is no sudo: run `sudo %s daemon --uid %d --gid %d` as a service", self, uid, gid)
		}
		fmt.Fprintln(errOut, "Starting the tunnel daemon with sudo (it creates a TUN device and changes routes and DNS)...")
		cmd = exec.Command("sudo", append([]string{"--background", "--"}, args...)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, errOut, errOut
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start the tunnel daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(15 * time.Second)
	for {
		if c, closeFn, err := daemonClient(ctx); err == nil {
			return c, closeFn, nil
		}
		select {
		case err := <-exited:
			switch {
			case err != nil && os.Geteuid() == 0: // the daemon itself ended
				return nil, nil, fmt.Errorf("the tunnel daemon exited: %v (see %s)", err, logPath)
			case err != nil:
				return nil, nil, fmt.Errorf("tunnel needs root for its daemon and sudo failed (%v): run `sudo %s daemon --uid %d --gid %d` yourself or as a service", err, self, uid, gid)
			}
			exited = nil // sudo --background returns once the daemon started
		case <-deadline:
			return nil, nil, fmt.Errorf("the tunnel daemon did not start within 15s: see %s", logPath)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
