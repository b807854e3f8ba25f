package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"tunnel.dev/tunnel/rpc"
)

// spare plays someone who may port-forward to an intercepted pod but does
// not hold the intercept: it offers the sidecar's direct port a spare for
// each intercept id in FIRST..LAST, with a key of its own, and prints the
// sidecar's answer to each ("id=N status=S"; S is an rpc.Status, or
// "closed" when the sidecar said nothing).
func spare(ctx context.Context, out io.Writer, args []string) error {
	if len(args) != 3 {
		return errors.New("usage: spare ADDR FIRST LAST")
	}
	first, err1 := strconv.ParseUint(args[1], 10, 64)
	last, err2 := strconv.ParseUint(args[2], 10, 64)
	if err1 != nil || err2 != nil || first > last {
		return errors.New("FIRST and LAST must be intercept ids, FIRST <= LAST")
	}
	key := make([]byte, rpc.DirectKeyLen)
	for id := first; id <= last; id++ {
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", args[0])
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		answer := "closed"
		if err := rpc.WriteDirectHello(c, rpc.DirectHello{Intercept: id, Key: key}); err != nil {
			c.Close()
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			answer = strconv.Itoa(int(b[0]))
		}
		c.Close()
		if _, err := fmt.Fprintf(out, "id=%d status=%s\n", id, answer); err != nil {
			return err
		}
	}
	return nil
}
