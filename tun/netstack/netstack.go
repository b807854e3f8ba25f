// Package netstack is the laptop side of the tunnel: it reads IP packets
// from a TUN device into a userspace TCP/IP stack (gVisor) and turns each
// TCP connection and each UDP flow into a stream opened through a Dialer.
// TCP is terminated here, so only payload bytes cross the tunnel.
//
// It is the only package that imports gVisor; none of its types appear in
// this package's API.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"tunnel.dev/tunnel/rpc"
)

// Dialer opens a stream to dst in the cluster for one TCP connection
// (kind rpc.KindTCP) or UDP flow (rpc.KindUDP) from src, the application's
// address (the manager's WireGuard path knows a session by it). It returns
// only once the
// far side has dialed the destination; an error means it could not (a
// rpc.Status error when the manager said so). For UDP, the returned conn
// carries datagrams framed with rpc.WriteDatagram / rpc.ReadDatagram.
//
// DialStream must return soon after ctx ends: Close waits for pending
// dials. A TCP stream should implement CloseWrite() error: without it the
// stack cannot pass on the application's half-close, and keeps the stream
// open until the cluster side finishes.
//
// A TCP stream may implement SendBuffer() int: the stack then keeps that
// much of the cluster's data unacknowledged for its connection (within
// Config.MaxSendBuffer) instead of tuning it by itself.
//
// A dialer that returns ErrBusy has the connection's SYN dropped
// unanswered, as the stack's own MaxInflightDials does: the application
// sends it again a second later.
type Dialer interface {
	DialStream(ctx context.Context, kind rpc.Kind, src, dst netip.AddrPort) (net.Conn, error)
}

// ErrBusy is a Dialer's answer when it has too many dials pending to
// take another now.
var ErrBusy = errors.New("too many connections waiting for their dial")

// Config tunes a Stack; zero fields take their defaults.
type Config struct {
	MTU              int           // of the TUN device; default dev.MTU(), else 1500
	MaxInflightDials int           // TCP handshakes (and new UDP flows) waiting on a dial at once; default 1024
	UDPIdleTimeout   time.Duration // a UDP flow without traffic is closed after this; default 60s
	DialTimeout      time.Duration // default 10s
	// MaxReceiveBuffer and MaxSendBuffer cap each TCP connection's
	// buffers, so many connections stay within a memory budget (the
	// manager's); defaults 8 MiB, generous enough for one connection to
	// fill the device.
	MaxReceiveBuffer int
	MaxSendBuffer    int
	// KeepAlive, when set, is how long a connection may be idle before the
	// stack probes the application's side (3 probes, a sixth of it apart)
	// and, without an answer, resets it; off by default.
	KeepAlive time.Duration
}

const (
	defaultMTU              = 1500
	defaultMaxInflightDials = 1024
	defaultUDPIdleTimeout   = 60 * time.Second
	defaultDialTimeout      = 10 * time.Second

	// minMTU is what IPv6 requires of every link.
	minMTU = 1280
	// maxMTU is the largest IP packet.
	maxMTU = 65535
)

// withDefaults fills zero fields; devMTU is the device's own answer (0 if
// it had none).
func (c Config) withDefaults(devMTU int) (Config, error) {
	if c.MTU == 0 {
		c.MTU = devMTU
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return c, fmt.Errorf("MTU %d outside %d..%d", c.MTU, minMTU, maxMTU)
	}
	if c.MaxInflightDials <= 0 {
		c.MaxInflightDials = defaultMaxInflightDials
	}
	if c.UDPIdleTimeout <= 0 {
		c.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = defaultDialTimeout
	}
	if c.MaxReceiveBuffer <= 0 {
		c.MaxReceiveBuffer = tcpRXBufMax
	}
	if c.MaxSendBuffer <= 0 {
		c.MaxSendBuffer = tcpTXBufMax
	}
	return c, nil
}

// nicID is the stack's only NIC: the TUN device.
const nicID tcpip.NICID = 1

// Stack is a userspace TCP/IP stack between a TUN device and a Dialer.
type Stack struct {
	log    *slog.Logger
	dev    tun.Device
	dialer Dialer
	cfg    Config

	ipstack *stack.Stack
	link    *link
	stats   counters
	limiter *logLimiter
	bufs    sync.Pool // of *[]byte, copyBufSize long
	udpSem  chan struct{}

	ctx        context.Context // ends on Close; parent of every dial
	cancel     context.CancelFunc
	wg         sync.WaitGroup // forwarders and flows
	stopRead   atomic.Bool    // the read loop drops what it reads and returns
	stopWrite  context.CancelFunc
	writerDone chan struct{}

	mu     sync.Mutex // guards following
	closed bool
	flows  map[closer]struct{} // open TCP connections, UDP flows, listeners
	addrs  map[netip.Addr]int  // addresses claimed by listeners, counted
}

// closer is anything Close must end: a flow or a listener.
type closer interface{ close() }

// New starts a stack that reads packets from dev and writes its answers back
// to it, in batches of dev.BatchSize() with the offset wireguard's Linux
// offloads need. It does not own dev: Close stops the stack, not the
// device, and reading dev.Events() is the caller's business.
func New(logger *slog.Logger, dev tun.Device, dialer Dialer, cfg Config) (*Stack, error) {
	devMTU, err := dev.MTU()
	if err != nil {
		devMTU = 0
	}
	s, err := newStack(logger, dialer, cfg, devMTU, false)
	if err != nil {
		return nil, err
	}
	s.dev = dev
	writeCtx, stopWrite := context.WithCancel(context.Background())
	s.stopWrite, s.writerDone = stopWrite, make(chan struct{})
	go s.writeLoop(writeCtx)
	go s.readLoop()
	s.log.Info("started", "mtu", s.cfg.MTU, "batch", dev.BatchSize())
	return s, nil
}

// newStack makes a stack without a device: New attaches one, NewDevice is
// one. cut says whether the stack cuts TCP's large segments itself.
func newStack(logger *slog.Logger, dialer Dialer, cfg Config, devMTU int, cut bool) (*Stack, error) {
	cfg, err := cfg.withDefaults(devMTU)
	if err != nil {
		return nil, fmt.Errorf("configure netstack: %w", err)
	}
	ipstack, err := newIPStack(cfg)
	if err != nil {
		return nil, fmt.Errorf("configure netstack: %w", err)
	}
	s := &Stack{
		log:     logger.With("subsystem", "netstack"),
		dialer:  dialer,
		cfg:     cfg,
		ipstack: ipstack,
		link:    newLink(cfg.MTU, cut),
		limiter: newLogLimiter(logEvery, time.Now),
		udpSem:  make(chan struct{}, cfg.MaxInflightDials),
		flows:   map[closer]struct{}{},
		addrs:   map[netip.Addr]int{},
	}
	s.bufs.New = func() any { b := make([]byte, copyBufSize); return &b }
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.attach(); err != nil {
		s.cancel()
		ipstack.Destroy()
		return nil, fmt.Errorf("configure netstack: %w", err)
	}
	return s, nil
}

// attach creates the NIC, opens it to every address and installs the
// forwarders.
func (s *Stack) attach() error {
	if err := s.ipstack.CreateNIC(nicID, s.link); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	// Promiscuous: accept packets for any destination the routes send us.
	// Spoofing: answer from that destination.
	if err := s.ipstack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("set promiscuous mode: %s", err)
	}
	if err := s.ipstack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("set spoofing: %s", err)
	}
	s.ipstack.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	tcpFwd := tcp.NewForwarder(s.ipstack, min(tcpRXBufDefault, s.cfg.MaxReceiveBuffer), s.cfg.MaxInflightDials, s.forwardTCP)
	s.ipstack.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(s.ipstack, s.forwardUDP)
	s.ipstack.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	return nil
}

// TCP buffer sizes: generous maxima so one connection can fill the TUN
// device; gVisor only grows a buffer as far as a connection needs it.
const (
	tcpRXBufDefault = 1 << 20
	tcpRXBufMax     = 8 << 20
	tcpTXBufDefault = 1 << 20
	tcpTXBufMax     = 8 << 20
)

// newIPStack makes a gVisor stack for IPv4 and IPv6 tuned for bulk
// throughput.
func newIPStack(cfg Config) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	// gVisor's RACK loss detection retransmits spuriously under load
	// (tailscale#9707); plain SACK recovery does better.
	recovery := tcpip.TCPRecovery(0)
	// Reno, pinned: cubic can overflow the congestion window in this
	// gVisor version (gvisor#11632).
	cc := tcpip.CongestionControlOption("reno")
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rx := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize,
		Default: min(tcpRXBufDefault, cfg.MaxReceiveBuffer), Max: max(cfg.MaxReceiveBuffer, tcp.MinBufferSize)}
	tx := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize,
		Default: min(tcpTXBufDefault, cfg.MaxSendBuffer), Max: max(cfg.MaxSendBuffer, tcp.MinBufferSize)}
	// No TIME-WAIT: a SYN that reuses a 4-tuple still in TIME-WAIT is
	// handed over only to a listening endpoint, and here a forwarder takes
	// new connections, so gVisor dropped it: a client making thousands of
	// short connections (its kernel reuses source ports) saw one hang for
	// the whole default minute, and even a 10 ms TIME-WAIT cost a reconnect
	// the 1 s SYN retransmit. On a TUN link no stray segment outlives the
	// connection; one that came would get a reset.
	timeWait := tcpip.TCPTimeWaitTimeoutOption(0)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &recovery, &cc, &moderate, &rx, &tx, &timeWait} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("set TCP option %T: %s", opt, err)
		}
	}
	return s, nil
}

// goStart counts one more goroutine unless the stack is closing; every
// goroutine started after New goes through it so Close can wait for all.
func (s *Stack) goStart() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// track registers c so Close ends it; false (and c untouched) if the stack
// is closing.
func (s *Stack) track(c closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.flows[c] = struct{}{}
	return true
}

func (s *Stack) untrack(c closer) {
	s.mu.Lock()
	delete(s.flows, c)
	s.mu.Unlock()
}

// Close stops the stack: it resets the connections it forwards, ends every
// flow and listener, stops writing to the device and waits for its
// goroutines. The goroutine reading the device ends when the device's Read
// returns, so close the device (after Close) to end it at once.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("netstack already closed")
	}
	s.closed = true
	flows := make([]closer, 0, len(s.flows))
	for c := range s.flows {
		flows = append(flows, c)
	}
	s.mu.Unlock()

	for _, c := range flows {
		c.close()
	}
	s.cancel() // pending dials fail, and reset their handshakes
	// Packets still flow meanwhile, so a handshake whose dial won the
	// race with cancel completes (and its flow is closed at once).
	s.wg.Wait()
	s.stopRead.Store(true)
	s.ipstack.Close()
	// The resets queued above still go out: applications learn at once
	// that their connections are gone.
	if s.stopWrite != nil {
		s.stopWrite()
		<-s.writerDone
	}
	s.ipstack.Wait()
	s.link.Close()
	s.log.Info("stopped")
	return nil
}
