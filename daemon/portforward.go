package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// pfConn is one port-forward stream pair to a pod's port, through the API
// server and the kubelet: the pipe the yamux session runs on, or one
// connection of the direct path.
type pfConn struct {
	conn      httpstream.Connection
	data      httpstream.Stream
	errStream httpstream.Stream
	ownsConn  bool // Close closes the whole port-forward connection

	once sync.Once
	err  atomic.Pointer[error] // what the error stream said, if anything
}

// dialPortForward opens a port-forward connection to pod:port and its
// first stream pair; closing the stream closes the connection.
func dialPortForward(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, ns, pod string, port int) (*pfConn, error) {
	conn, err := dialPortForwardConn(ctx, rc, cs, ns, pod)
	if err != nil {
		return nil, err
	}
	pf, err := openPortForward(conn, port, 0)
	if err != nil {
		conn.Close()
		return nil, err
	}
	pf.ownsConn = true
	return pf, nil
}

// dialPortForwardConn opens a port-forward connection to a pod. It speaks
// SPDY first, which the API server passes through as bytes, and WebSocket
// (as kubectl does first) only when the SPDY upgrade fails, say at a proxy
// that does not carry it: over WebSocket the API server translates every
// frame, which cost it and the daemon 30-40% more CPU per byte in the lab
// (go run ./integration/cmd/bench -only intercept). Each connection to a
// port is a stream pair on it (openPortForward).
func dialPortForwardConn(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, ns, pod string) (httpstream.Connection, error) {
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(rc)
	if err != nil {
		return nil, fmt.Errorf("set up SPDY: %w", err)
	}
	var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, rc); err == nil {
		dialer = portforward.NewFallbackDialer(dialer, ws, spdyRefused)
	}

	type result struct {
		c   httpstream.Connection
		err error
	}
	done := make(chan result, 1)
	go func() { // Dial takes no context
		c, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("port-forward to pod %s/%s: %w", ns, pod, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// spdyRefused says whether a SPDY dial failed at the upgrade, which
// WebSocket may pass. The SPDY round tripper does not type its refusal.
func spdyRefused(err error) bool {
	return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err) ||
		strings.Contains(err.Error(), "unable to upgrade connection")
}

// openPortForward opens stream pair id on conn to the pod's port: the
// kubelet dials the port for it, in the pod's network namespace.
func openPortForward(conn httpstream.Connection, port int, id uint64) (*pfConn, error) {
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, strconv.FormatUint(id, 10))
	errStream, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("open port-forward error stream: %w", err)
	}
	errStream.Close() // we only read it
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(headers)
	if err != nil {
		errStream.Reset()
		conn.RemoveStreams(errStream)
		return nil, fmt.Errorf("open port-forward data stream: %w", err)
	}
	pf := &pfConn{conn: conn, data: data, errStream: errStream}
	go func() {
		// The kubelet reports a failed dial of the pod's port here; the
		// data stream then ends, and so does what runs on it.
		msg, _ := io.ReadAll(errStream)
		if len(msg) > 0 {
			err := errors.New(string(msg))
			pf.err.Store(&err)
			pf.Close()
		}
	}()
	return pf, nil
}

func (p *pfConn) Read(b []byte) (int, error) {
	n, err := p.data.Read(b)
	if perr := p.err.Load(); err != nil && perr != nil {
		err = fmt.Errorf("port-forward: %w", *perr)
	}
	return n, err
}

func (p *pfConn) Write(b []byte) (int, error) { return p.data.Write(b) }

// CloseWrite ends our writes; the pod's side reads its end. (The kubelet
// does not pass that on as a half-close: see the sidecar's direct path.)
func (p *pfConn) CloseWrite() error { return p.data.Close() }

// Close resets the stream pair, which wakes its blocked reads, and ends
// the connection too when the pair owns it.
func (p *pfConn) Close() error {
	p.once.Do(func() {
		p.data.Reset()
		p.errStream.Reset()
		if p.ownsConn {
			p.conn.Close()
		} else {
			p.conn.RemoveStreams(p.data, p.errStream)
		}
	})
	return nil
}

// Closed is closed when the port-forward connection ends.
func (p *pfConn) Closed() <-chan bool { return p.conn.CloseChan() }

// A pfConn is a net.Conn for the relays: Close wakes its reads, so it
// needs no deadlines.
func (p *pfConn) LocalAddr() net.Addr              { return pfAddr{} }
func (p *pfConn) RemoteAddr() net.Addr             { return pfAddr{} }
func (p *pfConn) SetDeadline(time.Time) error      { return nil }
func (p *pfConn) SetReadDeadline(time.Time) error  { return nil }
func (p *pfConn) SetWriteDeadline(time.Time) error { return nil }

type pfAddr struct{}

func (pfAddr) Network() string { return "port-forward" }
func (pfAddr) String() string  { return "port-forward" }
