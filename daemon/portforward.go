package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// pfConn is one port-forward data stream to a pod's port, through the API
// server and the kubelet: the pipe the yamux session runs on.
type pfConn struct {
	conn httpstream.Connection
	data httpstream.Stream

	once sync.Once
	err  atomic.Pointer[error] // what the error stream said, if anything
}

// dialPortForward opens a port-forward to pod:port the way kubectl does:
// WebSocket first, SPDY when the server does not upgrade to it.
func dialPortForward(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, ns, pod string, port int) (*pfConn, error) {
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(rc)
	if err != nil {
		return nil, fmt.Errorf("set up SPDY: %w", err)
	}
	var dialer httpstream.Dialer = spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, rc); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
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
	var conn httpstream.Connection
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("port-forward to pod %s/%s: %w", ns, pod, r.err)
		}
		conn = r.c
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}

	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, "0")
	errStream, err := conn.CreateStream(headers)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open port-forward error stream: %w", err)
	}
	errStream.Close() // we only read it
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(headers)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open port-forward data stream: %w", err)
	}
	pf := &pfConn{conn: conn, data: data}
	go func() {
		// The kubelet reports a failed dial of the pod's port here; the
		// data stream then ends, and so does the session on it.
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

func (p *pfConn) Close() error {
	p.once.Do(func() {
		p.data.Reset()
		p.conn.Close()
	})
	return nil
}

// Closed is closed when the port-forward connection ends.
func (p *pfConn) Closed() <-chan bool { return p.conn.CloseChan() }
