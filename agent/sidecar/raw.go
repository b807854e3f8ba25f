package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"tunnel.dev/tunnel/relay"
	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// maxReplay bounds what a connection may send before its laptop has
// answered: kept to replay to the app if the laptop cannot take it.
const maxReplay = 64 << 10

// raw relays a whole connection: to the laptop when a global intercept
// holds the port and its laptop answers, else to the app. fw, when the
// client said nothing yet, learns whether the server speaks first.
func (c *capture) raw(ctx context.Context, conn net.Conn, fw *firstWord) {
	defer conn.Close()
	if fw != nil {
		conn = fw.conn(conn, false)
	}
	client, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
	var replay []byte
	for _, ic := range c.link.intercepts(c.port) {
		if ic.GetSpec().GetMode() != managerpb.InterceptMode_GLOBAL {
			continue
		}
		ok, buffered := c.toLaptop(ctx, conn, ic, client, fw)
		if ok {
			return
		}
		name := ic.GetSpec().GetName()
		if ic.GetSpec().GetNoFallback() {
			c.metrics.requests.WithLabelValues(name, "failed").Inc()
			if looksLikeHTTP(buffered) && !strings.HasPrefix(string(buffered), "PRI") {
				msg := "intercept " + name + ": the laptop cannot answer\n"
				fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
			}
			return
		}
		c.metrics.fallbacks.WithLabelValues(name).Inc()
		replay = buffered
		break
	}
	app, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", c.app.String())
	if err != nil {
		c.log.Debug("dial the app", "err", err)
		return
	}
	if len(replay) > 0 {
		if _, err := app.Write(replay); err != nil {
			app.Close()
			return
		}
	}
	if fw != nil {
		app = fw.conn(app, true)
	}
	relay.Conns(ctx, conn, app, relay.Options{})
}

// toLaptop sends conn to ic's laptop without waiting for its answer first:
// the header and the client's first bytes go out together (one round trip
// over the port-forward, not two), and what was sent is kept until the
// laptop's status arrives. On a refusal it returns those bytes, so the
// connection can go to the app as if nothing had happened.
func (c *capture) toLaptop(ctx context.Context, conn net.Conn, ic *managerpb.Intercept, client netip.AddrPort, fw *firstWord) (bool, []byte) {
	name := ic.GetSpec().GetName()
	st, err := c.link.start(ic, client)
	if err != nil {
		return false, nil
	}
	unregister := c.track(ic.GetId(), conn, st)
	defer unregister()
	rr := &replayReader{r: conn, recording: true}
	rr.cond = sync.NewCond(&rr.mu)
	toLaptop := c.metrics.bytes.WithLabelValues(name, "to_laptop")
	upDone := make(chan error, 1)
	up, down := c.buffers.Get(), c.buffers.Get()
	defer c.buffers.Put(up)
	defer c.buffers.Put(down)
	go func() {
		_, err := io.CopyBuffer(relay.CountingWriter{W: st, C: toLaptop}, rr, up)
		if err == nil {
			_ = st.CloseWrite()
		}
		upDone <- err
	}()

	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	serr := rpc.ReadStatus(st)
	_ = st.SetReadDeadline(time.Time{})
	if serr != nil {
		// Stop the upstream copy where it is (reading the client, or
		// writing to the dead stream); what it read is in the replay.
		c.log.Debug("laptop cannot answer", "intercept", name, "err", serr)
		rr.abort()
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		st.Close()
		_ = st.SetWriteDeadline(time.Unix(1, 0))
		<-upDone
		_ = conn.SetReadDeadline(time.Time{})
		return false, rr.taken()
	}
	rr.stop()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c.metrics.requests.WithLabelValues(name, "laptop").Inc()
	var fromLaptop io.Reader = st
	if fw != nil {
		fromLaptop = fw.conn(st, true)
	}
	_, derr := io.CopyBuffer(relay.CountingWriter{W: conn, C: c.metrics.bytes.WithLabelValues(name, "from_laptop")}, relay.OnlyReader{Reader: fromLaptop}, down)
	if derr != nil {
		conn.Close()
		st.Close()
	} else if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if err := <-upDone; err != nil {
		st.Close()
	}
	return true, nil
}

// replayReader reads a client connection, keeping what it read while
// recording; past maxReplay it waits until recording stops.
type replayReader struct {
	r         io.Reader
	mu        sync.Mutex // guards following
	cond      *sync.Cond
	recording bool
	aborted   bool
	buf       []byte
}

func (rr *replayReader) Read(p []byte) (int, error) {
	rr.mu.Lock()
	for rr.recording && !rr.aborted && len(rr.buf) >= maxReplay {
		rr.cond.Wait()
	}
	if rr.aborted {
		rr.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	rec := rr.recording
	if rec && len(p) > maxReplay-len(rr.buf) {
		p = p[:maxReplay-len(rr.buf)]
	}
	rr.mu.Unlock()
	n, err := rr.r.Read(p)
	if rec && n > 0 {
		rr.mu.Lock()
		rr.buf = append(rr.buf, p[:n]...)
		rr.mu.Unlock()
	}
	return n, err
}

// stop ends recording: the laptop took the connection.
func (rr *replayReader) stop() {
	rr.mu.Lock()
	rr.recording, rr.buf = false, nil
	rr.cond.Broadcast()
	rr.mu.Unlock()
}

// abort makes reads fail from now on, keeping what was recorded.
func (rr *replayReader) abort() {
	rr.mu.Lock()
	rr.aborted = true
	rr.cond.Broadcast()
	rr.mu.Unlock()
}

func (rr *replayReader) taken() []byte {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return rr.buf
}

// track remembers a connection relayed to a laptop for intercept id, so it
// can be closed when the intercept ends (its client then reconnects, to
// the app).
func (c *capture) track(id uint64, conns ...io.Closer) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == nil {
		c.live = map[uint64]map[*[]io.Closer]bool{}
	}
	if c.live[id] == nil {
		c.live[id] = map[*[]io.Closer]bool{}
	}
	key := &conns
	c.live[id][key] = true
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.live[id], key)
	}
}

// reap closes the connections of intercepts that ended.
func (c *capture) reap() {
	live := map[uint64]bool{}
	for _, ic := range c.link.intercepts(c.port) {
		live[ic.GetId()] = true
	}
	c.mu.Lock()
	var closing []io.Closer
	for id, set := range c.live {
		if live[id] {
			continue
		}
		for k := range set {
			closing = append(closing, *k...)
		}
		delete(c.live, id)
	}
	c.mu.Unlock()
	for _, cl := range closing {
		cl.Close()
	}
	c.http.forget(live)
}
