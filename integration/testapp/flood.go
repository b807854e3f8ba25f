package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// hold is a server that accepts connections and never reads them: what a
// destination that holds a tunnel's buffers looks like.
func hold(ctx context.Context, out io.Writer, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: hold ADDR")
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "holding on", ln.Addr())
	var held []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
}

// flood opens N connections to ADDR at once, writes BYTES on each (as far
// as the way lets within HOLD), keeps them for HOLD, and prints how many
// opened and how many bytes went: what one laptop can try to make the
// manager hold.
func flood(ctx context.Context, out io.Writer, args []string) error {
	if len(args) != 4 {
		return errors.New("usage: flood ADDR N BYTES HOLD")
	}
	n, err1 := strconv.Atoi(args[1])
	size, err2 := strconv.Atoi(args[2])
	holdFor, err3 := time.ParseDuration(args[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	var opened, refused atomic.Int64
	var sent atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(holdFor)
	buf := make([]byte, size)
	for range n {
		wg.Go(func() {
			d := net.Dialer{Timeout: 10 * time.Second}
			c, err := d.DialContext(ctx, "tcp", args[0])
			if err != nil {
				refused.Add(1)
				return
			}
			defer c.Close()
			_ = c.SetWriteDeadline(deadline)
			w, err := c.Write(buf)
			sent.Add(int64(w))
			// The manager may answer a stream past its cap only once it
			// reads: a reset says so.
			if err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
				refused.Add(1)
				return
			}
			opened.Add(1)
			time.Sleep(time.Until(deadline))
		})
	}
	wg.Wait()
	fmt.Fprintf(out, "opened %d refused %d sent %d\n", opened.Load(), refused.Load(), sent.Load())
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
