package wgpath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"tunnel.dev/tunnel/tun"
	"tunnel.dev/tunnel/tun/netstack"
)

// The tunnel's own addresses: the manager's, and one per session from the
// rest (the upper half of RFC 2544's benchmarking range, whose lower half
// holds the laptop's resolver, and a ULA). They never leave the tunnel:
// the laptop puts its own address back on every reply.
var (
	tunnelNet4 = netip.MustParsePrefix("198.19.0.0/16")
	tunnelNet6 = netip.MustParsePrefix("fd74:756e:6e65:6c00::/64")
	Server4    = netip.MustParseAddr("198.19.0.1")
)

// TunnelAddr says whether a is one of the tunnel's own addresses, which
// never leave it.
func TunnelAddr(a netip.Addr) bool {
	a = a.Unmap()
	return tunnelNet4.Contains(a) || tunnelNet6.Contains(a)
}

// Server is the manager's end of the WireGuard path: a userspace
// WireGuard device on a UDP port, whose packets a userspace stack
// terminates and dials into the cluster through dialer, which knows the
// session by the connection's source address. Peers are added for a live
// session and removed with it; nothing is kept on disk, and the device's
// own key lives as long as the process.
type Server struct {
	log   *slog.Logger
	dev   *device.Device
	stack *netstack.Stack
	pipe  tun.Device // the stack, as WireGuard's device
	echo  net.PacketConn
	pub   Key

	mu    sync.Mutex // guards following
	peers map[Key]int
	used  map[int]Key
	next  int
	heard map[netip.Addr]heardAt // a session's last probes, by its tunnel address

	// dialErrors, when set, counts a session's failed dials by its tunnel
	// address: the answer to each probe carries them, so the laptop's
	// status counts what the manager refused it over this path too.
	dialErrors atomic.Pointer[func(netip.Addr) (failed, refused uint64)]
}

// ReportDialErrors makes every probe's answer carry the session's counts
// of failed dials (of which refused by the manager's rules) from f.
func (s *Server) ReportDialErrors(f func(netip.Addr) (failed, refused uint64)) {
	s.dialErrors.Store(&f)
}

// Each connection's buffers on the manager. Receive: what a laptop may
// make it hold for an upload its destination does not read, the
// port-forward's stream window. Send: what it keeps unacknowledged for a
// download, at most; the dialer gives each connection its share of its
// session's budget (the manager's wgSendBuffer). The stream limits bound
// how many connections hold them.
const (
	maxReceiveBuffer = 256 << 10
	maxSendBuffer    = 4 << 20
)

// keepAlive is how long a connection may be silent before the manager
// asks the laptop whether it is still there (three times, 10 s apart): a
// laptop whose path went down forgets its connections, and their slots
// come back within a couple of minutes, not at the session's end.
const keepAlive = time.Minute

// maxPeers is how many sessions the tunnel's addresses hold.
const maxPeers = 1<<16 - 3

// NewServer listens for WireGuard on UDP port.
// maxPending bounds the connections (and UDP flows) of all sessions
// waiting for their dial.
func NewServer(base *slog.Logger, port int, dialer netstack.Dialer, maxPending int) (*Server, error) {
	log := base.With("subsystem", "wireguard")
	priv, err := NewPrivateKey()
	if err != nil {
		return nil, err
	}
	st, stackDev, err := netstack.NewDevice(base.With("path", "wireguard"), dialer, netstack.Config{
		MTU: MTU, MaxInflightDials: maxPending, MaxReceiveBuffer: maxReceiveBuffer, MaxSendBuffer: maxSendBuffer,
		KeepAlive: keepAlive})
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, stack: st, pipe: stackDev, pub: priv.Public(),
		peers: map[Key]int{}, used: map[int]Key{}, next: 2, heard: map[netip.Addr]heardAt{}}
	if s.echo, err = st.ListenPacket(netip.AddrPortFrom(Server4, ProbePort)); err != nil {
		s.closeStack()
		return nil, err
	}
	go s.serveEcho()
	s.dev = device.NewDevice(stackDev, conn.NewDefaultBind(), wgLogger(log))
	if err := s.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", priv.hex(), port)); err != nil {
		s.Close()
		return nil, fmt.Errorf("listen for WireGuard on UDP port %d: %w", port, err)
	}
	if err := s.dev.Up(); err != nil {
		s.Close()
		return nil, fmt.Errorf("listen for WireGuard on UDP port %d: %w", port, err)
	}
	return s, nil
}

// PublicKey is the device's, for the sessions' offers.
func (s *Server) PublicKey() Key { return s.pub }

// Port is the UDP port the device listens on.
func (s *Server) Port() int {
	cfg, err := s.dev.IpcGet()
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(cfg, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// Add admits a session's key and gives it its tunnel addresses: packets
// from the key are accepted only from those.
func (s *Server) Add(pub Key) (addr4, addr6 netip.Addr, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.peers[pub]; ok {
		return addr4, addr6, errors.New("this WireGuard key is taken by another session")
	}
	if len(s.peers) >= maxPeers {
		return addr4, addr6, errors.New("the manager's WireGuard path has no addresses left")
	}
	for s.used[s.next] != (Key{}) || s.next < 2 || s.next > maxPeers+1 {
		s.next++
		if s.next > maxPeers+1 {
			s.next = 2
		}
	}
	i := s.next
	s.next++
	addr4, addr6 = peerAddrs(i)
	cfg := fmt.Sprintf("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\nallowed_ip=%s/128\n",
		pub.hex(), addr4, addr6)
	if err := s.dev.IpcSet(cfg); err != nil {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("add a WireGuard peer: %w", err)
	}
	s.peers[pub], s.used[i] = i, pub
	return addr4, addr6, nil
}

// Remove ends a key's access: from now on its packets get no answer.
func (s *Server) Remove(pub Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.peers[pub]
	if !ok {
		return
	}
	if err := s.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", pub.hex())); err != nil {
		s.log.Error("remove a WireGuard peer", "err", err)
	}
	delete(s.peers, pub)
	delete(s.used, i)
	a4, _ := peerAddrs(i)
	delete(s.heard, a4)
}

// Peers is how many sessions are admitted.
func (s *Server) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.peers)
}

// peerAddrs are the i-th session's tunnel addresses.
func peerAddrs(i int) (netip.Addr, netip.Addr) {
	b4 := tunnelNet4.Addr().As4()
	n := uint32(b4[0])<<24 | uint32(b4[1])<<16 | uint32(b4[2])<<8 | uint32(b4[3]) + uint32(i)
	b6 := tunnelNet6.Addr().As16()
	b6[12], b6[13], b6[14], b6[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), netip.AddrFrom16(b6)
}

// serveEcho answers the laptops' probes with what they sent, followed by
// the session's dial errors, and notes when it heard each session.
func (s *Server) serveEcho() {
	buf := make([]byte, 64)
	for {
		n, from, err := s.echo.ReadFrom(buf)
		if err != nil {
			return
		}
		if n != probeLen && n != probeLen-1 { // the flags came later
			continue
		}
		var a netip.Addr
		if ua, ok := from.(*net.UDPAddr); ok {
			a, _ = netip.AddrFromSlice(ua.IP)
			a = a.Unmap()
		}
		var failed, refused uint64
		if f := s.dialErrors.Load(); f != nil && a.IsValid() {
			failed, refused = (*f)(a)
		}
		binary.BigEndian.PutUint64(buf[n:], failed)
		binary.BigEndian.PutUint64(buf[n+8:], refused)
		s.echo.WriteTo(buf[:n+16], from)
		s.mu.Lock()
		if s.addrUsed(a) {
			h := s.heard[a]
			h.any = time.Now()
			if n == probeLen && buf[probeLen-1]&probeTakesIntercepts != 0 {
				h.offer = h.any
			}
			s.heard[a] = h
		}
		s.mu.Unlock()
	}
}

// addrUsed says whether a is an admitted session's IPv4 tunnel address.
func (s *Server) addrUsed(a netip.Addr) bool {
	if !a.Is4() || !tunnelNet4.Contains(a) {
		return false
	}
	b := a.As4()
	i := int(b[2])<<8 | int(b[3])
	a4, _ := peerAddrs(i)
	return a4 == a && s.used[i] != (Key{})
}

// Live says whether the session at tunnel address a probed the path
// within the time a laptop takes to call it down, offering to take
// intercepted connections (it serves them, and its link is not lossy):
// the manager may then open them to it over WireGuard.
func (s *Server) Live(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.heard[a]
	return ok && time.Since(h.offer) < deadAfter
}

// Heard says whether the session at tunnel address a probed the path
// within the time a laptop takes to call it down, whatever it offered:
// its connections over the path still carry packets.
func (s *Server) Heard(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.heard[a]
	return ok && time.Since(h.any) < deadAfter
}

// heardAt is when a session's last probe came, and the last that offered
// to take intercepted connections.
type heardAt struct{ any, offer time.Time }

// DialLaptop opens a connection to the intercept port of the session at
// tunnel address a, over WireGuard.
func (s *Server) DialLaptop(ctx context.Context, a netip.Addr) (*netstack.DialedConn, error) {
	return s.stack.DialTCP(ctx, Server4, netip.AddrPortFrom(a, InterceptPort))
}

// Close stops the device and the stack; every flow ends.
func (s *Server) Close() {
	if s.dev != nil {
		s.dev.Close() // closes the stack's device
	}
	s.closeStack()
}

func (s *Server) closeStack() {
	if s.echo != nil {
		s.echo.Close()
	}
	s.stack.Close()
	s.pipe.Close()
}
