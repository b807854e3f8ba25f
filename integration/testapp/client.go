package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// client runs `lookup NAME` (prints each address on a line, through the
// pod's resolv.conf), `get URL` (prints the body of a 2xx answer), or
// `tcp ADDR` / `udp ADDR` (sends "ping", prints what the echo sent back).
func client(ctx context.Context, out io.Writer, verb string, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: %s ARG", verb)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch verb {
	case "lookup":
		addrs, err := net.DefaultResolver.LookupHost(ctx, args[0])
		if err != nil {
			return fmt.Errorf("look up %s: %w", args[0], err)
		}
		for _, a := range addrs {
			fmt.Fprintln(out, a)
		}
		return nil
	case "get":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("get %s: %w", args[0], err)
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("get %s: %s", args[0], resp.Status)
		}
		_, err = io.Copy(out, resp.Body)
		return err
	case "tcp", "udp":
		var d net.Dialer
		conn, err := d.DialContext(ctx, verb, args[0])
		if err != nil {
			return fmt.Errorf("dial %s %s: %w", verb, args[0], err)
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			conn.SetDeadline(dl)
		}
		if _, err := conn.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := io.ReadAtLeast(conn, buf, 4)
		if err != nil {
			return fmt.Errorf("read the echo from %s: %w", args[0], err)
		}
		_, err = fmt.Fprintln(out, string(buf[:n]))
		return err
	}
	return errors.New("unknown verb " + verb)
}
