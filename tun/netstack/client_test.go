package netstack

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The application side: the laptop's own addresses.
var (
	clientV4 = netip.MustParseAddr("10.0.0.1")
	clientV6 = netip.MustParseAddr("fd00::1")
)

// client is a second gVisor stack playing the applications on the laptop:
// its packets go into the fake device and the Stack's answers come back.
type client struct {
	stack  *stack.Stack
	ep     *channel.Endpoint
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newClient(t testing.TB, dev *chanDevice) *client {
	t.Helper()
	s, err := newIPStack(mustDefaults()) // tuned as the Stack is, so it is no bottleneck
	if err != nil {
		t.Fatal(err)
	}
	c := &client{stack: s, ep: channel.New(linkQueueLen, uint32(dev.mtu), "")}
	if err := s.CreateNIC(1, c.ep); err != nil {
		t.Fatalf("create client NIC: %s", err)
	}
	for _, a := range []netip.Addr{clientV4, clientV6} {
		fa, proto := fullAddr(netip.AddrPortFrom(a, 0))
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: fa.Addr.WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			t.Fatalf("add client address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(2)
	go c.pump(ctx, dev)
	go c.drain(ctx, dev)
	return c
}

// drain hands the client what the Stack wrote to the device.
func (c *client) drain(ctx context.Context, dev *chanDevice) {
	defer c.wg.Done()
	for {
		select {
		case p := <-dev.out:
			c.inject(p)
		case <-ctx.Done():
			return
		}
	}
}

func (c *client) inject(p []byte) {
	proto := header.IPv4ProtocolNumber
	if header.IPVersion(p) == header.IPv6Version {
		proto = header.IPv6ProtocolNumber
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	c.ep.InjectInbound(proto, pkt)
	pkt.DecRef()
}

// pump moves the client's outbound packets into the device.
func (c *client) pump(ctx context.Context, dev *chanDevice) {
	defer c.wg.Done()
	for {
		pkt := c.ep.ReadContext(ctx)
		if pkt == nil {
			return
		}
		var b bytes.Buffer
		for _, s := range pkt.AsSlices() {
			b.Write(s)
		}
		pkt.DecRef()
		if !dev.send(b.Bytes()) {
			return
		}
	}
}

func (c *client) close() {
	c.cancel()
	c.wg.Wait()
	c.stack.Close()
	c.stack.Wait()
	c.ep.Close()
}

func (c *client) dialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	fa, proto := fullAddr(dst)
	fa.NIC = 0
	return gonet.DialContextTCP(ctx, c.stack, fa, proto)
}

func (c *client) dialUDP(t testing.TB, dst netip.AddrPort) *gonet.UDPConn {
	t.Helper()
	fa, proto := fullAddr(dst)
	fa.NIC = 0
	conn, err := gonet.DialUDP(c.stack, nil, &fa, proto)
	if err != nil {
		t.Fatalf("client: dial UDP %s: %v", dst, err)
	}
	return conn
}

// mustDefaults is the Config every field of which has its default.
func mustDefaults() Config {
	c, err := Config{}.withDefaults(0)
	if err != nil {
		panic(err)
	}
	return c
}
