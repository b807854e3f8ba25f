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
// each intercept id in FIRST..LAST, proving a key of its own, and prints the
// sidecar's last answer to each ("id=N status=S"; S is an rpc.Status, or
// "closed" when the sidecar said nothing).
func spare(ctx context.Context, out io.Writer, args []string) error {
	if len(args) != 4 {
		return errors.New("usage: spare ADDR FIRST LAST POD")
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
		nl := make([]byte, rpc.DirectNonceLen)
		if err := rpc.WriteDirectHello(c, rpc.DirectHello{Intercept: id, Nonce: nl}); err != nil {
			c.Close()
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			answer = strconv.Itoa(int(b[0]))
			if rpc.Status(b[0]) == rpc.StatusOK {
				// The sidecar proved it knows the key; this side proves
				// one it made up, for the pod it is told.
				var rest [rpc.DirectNonceLen + rpc.DirectProofLen]byte
				if _, err := io.ReadFull(c, rest[:]); err == nil {
					proof := rpc.DirectProof(key, rpc.DirectLaptop, args[3], id, nl, rest[:rpc.DirectNonceLen])
					answer = "closed"
					if _, err := c.Write(proof); err == nil {
						if _, err := io.ReadFull(c, b[:]); err == nil {
							answer = strconv.Itoa(int(b[0]))
						}
					}
				}
			}
		}
		c.Close()
		if _, err := fmt.Fprintf(out, "id=%d status=%s\n", id, answer); err != nil {
			return err
		}
	}
	return nil
}
