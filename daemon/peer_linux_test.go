package daemon

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// The kernel's answer for a connection from this process is this process:
// its uid, gid and every supplementary group, read from the socket.
func TestPeerOfNamesThisProcess(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", l.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, p := acceptPeer(t, l)
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	_ = withFD(c, func(f int) error { fd = f; return nil })
	exact, err := peerGroups(fd)
	if err != nil {
		t.Fatalf("SO_PEERGROUPS: %v", err)
	}
	slices.Sort(want)
	slices.Sort(p.Groups)
	slices.Sort(exact)
	if p.UID != os.Getuid() || p.GID != os.Getgid() || !slices.Equal(p.Groups, want) || !slices.Equal(exact, want) {
		t.Errorf("peer %+v (SO_PEERGROUPS %v), want uid %d gid %d groups %v", p, exact, os.Getuid(), os.Getgid(), want)
	}
}

// A peer in more groups than the first buffer holds (the kernel's ERANGE
// path): a child process in 100 groups connects, and all 100 are named.
func TestPeerGroupsOfAManyGroupedPeer(t *testing.T) {
	if os.Getenv("TUNNEL_PEER_DIAL") != "" {
		c, err := net.Dial("unix", os.Getenv("TUNNEL_PEER_DIAL"))
		if err == nil {
			_, _ = c.Read(make([]byte, 1))
		}
		os.Exit(0)
	}
	if os.Getuid() != 0 {
		t.Skip("setting a child's groups needs root; make test runs as root")
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var groups []uint32
	for g := uint32(20000); g < 20100; g++ {
		groups = append(groups, g)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPeerGroupsOfAManyGroupedPeer$")
	cmd.Env = append(os.Environ(), "TUNNEL_PEER_DIAL="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: groups}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() }) // after the connection closes
	_, p := acceptPeer(t, l)
	var want []int
	for _, g := range groups {
		want = append(want, int(g))
	}
	slices.Sort(p.Groups)
	if !slices.Equal(p.Groups, want) {
		t.Errorf("groups %v, want 20000..20099", p.Groups)
	}
}

// acceptPeer takes the next connection, closed at the end of the test, and
// who the kernel says is at its other end.
func acceptPeer(t *testing.T, l net.Listener) (net.Conn, peer) {
	t.Helper()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p, err := peerOf(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, p
}
