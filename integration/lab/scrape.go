//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ScrapeLaptop lets the lab's Prometheus scrape addr inside a laptop (the
// daemon's metrics on the laptop's loopback, where a user's own agent
// would scrape them) until stop is called. Prometheus runs in the node's
// namespace and may not open connections into a laptop's, so a relay on
// the host end of the host link takes each scrape and dials addr from
// inside the laptop's namespace; a target file names the relay, labelled
// laptop=NAME.
func (l *Lab) ScrapeLaptop(ctx context.Context, laptop, addr string) (stop func(), err error) {
	lp, err := ensureLaptop(ctx, l.Paths, laptop)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(hostLinkHost.String(), "0"))
	if err != nil {
		return nil, err
	}
	target := filepath.Join(l.Paths.PrometheusTargets(), "laptops", laptop+".json")
	data, err := json.Marshal([]map[string]any{{
		"targets": []string{ln.Addr().String()},
		"labels":  map[string]string{"laptop": laptop},
	}})
	if err == nil {
		err = writeFileAtomic(target, data, 0o644)
	}
	if err != nil {
		ln.Close()
		return nil, err
	}
	r := &relay{nsPath: "/run/netns/" + lp.Netns, addr: addr, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.serve(ln)
	return func() {
		os.Remove(target)
		ln.Close()
		r.closeAll()
		r.wg.Wait()
	}, nil
}

// relay copies Prometheus' connections to addr inside a laptop: a few at
// once (Prometheus keeps one per target), each closed after a minute idle.
type relay struct {
	nsPath, addr string
	wg           sync.WaitGroup
	mu           sync.Mutex
	conns        map[net.Conn]bool
	closed       bool
}

const (
	relayConns = 4
	relayIdle  = time.Minute
)

func (r *relay) serve(ln net.Listener) {
	defer r.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		full := r.closed || len(r.conns) >= relayConns
		if !full {
			r.conns[c] = true
		}
		r.mu.Unlock()
		if full {
			c.Close()
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() { r.mu.Lock(); delete(r.conns, c); r.mu.Unlock() }()
			r.copy(c)
		}()
	}
}

func (r *relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
}

// copy joins c to addr dialled inside the laptop, both ways, until either
// side closes or stays idle.
func (r *relay) copy(c net.Conn) {
	defer c.Close()
	up, err := dialInNetns(r.nsPath, r.addr)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(idle{up}, idle{c})
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(idle{c}, idle{up})
	c.(*net.TCPConn).CloseWrite()
	<-done
}

// idle pushes a connection's deadline on with every read and write.
type idle struct{ net.Conn }

func (i idle) Read(p []byte) (int, error) {
	i.SetDeadline(time.Now().Add(relayIdle))
	return i.Conn.Read(p)
}

func (i idle) Write(p []byte) (int, error) {
	i.SetDeadline(time.Now().Add(relayIdle))
	return i.Conn.Write(p)
}

// dialInNetns opens a TCP connection from inside another network
// namespace: a socket belongs to the namespace it was made in. The dial
// runs on a thread of its own that is never unlocked, so Go retires the
// thread, namespace and all, instead of reusing it.
func dialInNetns(nsPath, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter %s: %w", nsPath, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, errors.Join(fmt.Errorf("dial %s in %s", addr, nsPath), r.err)
	}
	return r.c, nil
}
