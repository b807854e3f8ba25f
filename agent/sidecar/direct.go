package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// direct keeps the spare streams laptops open straight to this pod (a
// port-forward to rpc.SidecarDirectPort, through the API server and the
// kubelet), by intercept. A new connection to a laptop takes one, which
// spares it the manager's hop: the bytes cross one port-forward and are
// copied by two processes fewer. Without a spare (a laptop that may not
// port-forward to pods, a burst that used them all) it goes through the
// manager as before.
//
// Only HTTP takes this path. kubelet's port-forward passes no half-close:
// when one direction ends, containerd gives the other a second and then
// closes both. HTTP's pooled connections never half-close; a connection
// relayed whole might, so it stays on the manager's path, which carries it.
type direct struct {
	log  *slog.Logger
	link *link
	pod  string // this pod's name, which binds the handshake's proofs

	mu     sync.Mutex // guards following
	spares map[uint64][]net.Conn
	admits map[uint64]int // spares judged and being answered: their room is kept
	inUse  map[uint64]int // spares taken and not yet closed
	closed bool
}

const (
	// maxSpares bounds the spares an intercept may hold here: a laptop
	// keeps a few per pod, and more would only hold sockets.
	maxSpares = 16
	// helloWait bounds how long a new stream may take to say its hello.
	helloWait = 5 * time.Second
)

func newDirect(log *slog.Logger, l *link, pod string) *direct {
	return &direct{log: log, link: l, pod: pod, spares: map[uint64][]net.Conn{}, admits: map[uint64]int{}, inUse: map[uint64]int{}}
}

// serve accepts spares on ln until ctx ends, then closes those it holds.
func (d *direct) serve(ctx context.Context, ln net.Listener) {
	context.AfterFunc(ctx, func() {
		ln.Close()
		d.mu.Lock()
		defer d.mu.Unlock()
		d.closed = true
		for id, list := range d.spares {
			closeConns(list)
			delete(d.spares, id)
		}
	})
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go d.admit(conn)
	}
}

// admit runs a new stream's handshake and keeps it as a spare when the
// laptop proves it holds the intercept's key. Anyone in the pod, or anyone
// else who may port-forward to it, can connect: the key is what only the
// intercept's laptop knows, and it never crosses the stream.
func (d *direct) admit(conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(helloWait))
	h, err := rpc.ReadDirectHello(conn)
	if err != nil {
		d.log.Debug("direct stream without a hello", "err", err)
		conn.Close()
		return
	}
	answer := func(s rpc.Status) bool {
		_, err := conn.Write([]byte{byte(s)})
		return err == nil
	}
	key, verdict := d.judge(h)
	if verdict != rpc.StatusOK {
		answer(verdict)
		conn.Close()
		return
	}
	release := func() {
		if d.admits[h.Intercept]--; d.admits[h.Intercept] <= 0 {
			delete(d.admits, h.Intercept)
		}
	}
	err = rpc.AnswerDirect(conn, key, d.pod, h)
	if errors.Is(err, rpc.ErrDirectImpostor) {
		d.log.Warn("refusing a direct stream: its laptop could not prove the intercept's key", "intercept", h.Intercept)
		answer(rpc.StatusForbidden)
	}
	ok := err == nil && answer(rpc.StatusOK)
	_ = conn.SetDeadline(time.Time{})
	d.mu.Lock()
	defer d.mu.Unlock()
	release()
	// The intercept may have ended meanwhile: the laptop then sees the
	// spare close, as if the sidecar had reaped it.
	if !ok || d.closed || d.link.intercept(h.Intercept) == nil {
		conn.Close()
		return
	}
	d.spares[h.Intercept] = append(d.spares[h.Intercept], conn)
}

// judge says whether a spare for intercept h may be offered: this sidecar
// holds the intercept, with a key, and it has room for one more spare,
// which is then kept for it until admit is done. It returns the key.
func (d *direct) judge(h rpc.DirectHello) ([]byte, rpc.Status) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ic := d.link.intercept(h.Intercept)
	if ic == nil || len(ic.GetDirectKey()) == 0 {
		return nil, rpc.StatusForbidden
	}
	list := alive(d.spares[h.Intercept])
	d.spares[h.Intercept] = list
	if d.closed || len(list)+d.admits[h.Intercept] >= maxSpares {
		return nil, rpc.StatusRefused
	}
	d.admits[h.Intercept]++
	return ic.GetDirectKey(), rpc.StatusOK
}

// alive keeps the spares whose laptop is still there.
func alive(list []net.Conn) []net.Conn {
	out := list[:0]
	for _, c := range list {
		if open(c) {
			out = append(out, c)
		} else {
			c.Close()
		}
	}
	clear(list[len(out):])
	return out
}

// take hands out the newest spare of intercept id whose laptop is still
// there, or nil.
func (d *direct) take(id uint64) net.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	list := d.spares[id]
	for len(list) > 0 {
		c := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if open(c) {
			d.spares[id] = list
			return c
		}
		c.Close()
	}
	delete(d.spares, id)
	return nil
}

// open returns a connection to ic's laptop over a spare, once the laptop
// has dialed its local process; nil, nil when there is no spare. A spare
// that turns out dead is dropped for the next one; the laptop's own answer
// (nothing listens there) is returned as it is.
func (d *direct) open(ctx context.Context, ic *managerpb.Intercept) (net.Conn, error) {
	for {
		c := d.take(ic.GetId())
		if c == nil {
			return nil, nil
		}
		h := rpc.Header{Kind: rpc.KindIntercept, Dst: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), Flow: ic.GetSpec().GetLaptopId()}
		err := rpc.WriteHeader(c, h)
		if err == nil {
			err = awaitStatus(ctx, c)
		}
		var status rpc.Status
		switch {
		case err == nil:
			return d.inUseConn(ic.GetId(), c), nil
		case errors.As(err, &status), ctx.Err() != nil:
			c.Close()
			return nil, err
		}
		d.log.Debug("a direct spare broke; trying the next", "intercept", ic.GetSpec().GetName(), "err", err)
		c.Close()
	}
}

// up says whether ic's laptop reaches this pod directly: it left spares
// here, or one it left is in use.
func (d *direct) up(id uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.spares[id]) > 0 || d.inUse[id] > 0
}

// inUseConn counts c as in use until it is closed.
func (d *direct) inUseConn(id uint64, c net.Conn) net.Conn {
	d.mu.Lock()
	d.inUse[id]++
	d.mu.Unlock()
	return &usedSpare{Conn: c, release: func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.inUse[id]--; d.inUse[id] <= 0 {
			delete(d.inUse, id)
		}
	}}
}

type usedSpare struct {
	net.Conn
	once    sync.Once
	release func()
}

func (u *usedSpare) Close() error {
	u.once.Do(u.release)
	return u.Conn.Close()
}

// reap closes the spares of intercepts that ended.
func (d *direct) reap() {
	live := d.link.ids()
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, list := range d.spares {
		if !live[id] {
			closeConns(list)
			delete(d.spares, id)
		}
	}
}

func closeConns(list []net.Conn) {
	for _, c := range list {
		c.Close()
	}
}
