//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"tunnel.dev/tunnel/relay"
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
	// Prometheus keeps one connection per target: a few at once are
	// plenty, and stop ends them all.
	ctx, cancel := context.WithCancel(context.Background())
	slots := make(chan struct{}, 4)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case slots <- struct{}{}:
			default:
				c.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				up, err := dialInNetns("/run/netns/"+lp.Netns, addr)
				if err != nil {
					c.Close()
					return
				}
				relay.Conns(ctx, c, up, relay.Options{})
			}()
		}
	}()
	return func() {
		os.Remove(target)
		ln.Close()
		cancel()
		wg.Wait()
	}, nil
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
