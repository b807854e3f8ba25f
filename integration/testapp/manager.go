package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// manager is what a workload that turned on its cluster would try against
// tunnel's manager, built from tunnel's own protocol packages:
//
//	manager ADDR tcp DST        open a TCP stream to DST through the manager
//	manager ADDR streams DST N  hold N TCP streams to DST open at once
//	manager ADDR watch-cluster  ask for the cluster's subnets and namespaces
//	manager ADDR list           ask for every intercept
//
// It prints one line per answer: "ok", a stream status, or a gRPC code.
func managerClient(ctx context.Context, out io.Writer, args []string) error {
	if len(args) < 2 {
		return errors.New("usage: manager ADDR tcp DST | streams DST N | watch-cluster | list")
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// The sidecars' port is TLS; an attacker checks no key.
	var conn net.Conn
	var err error
	if strings.HasSuffix(args[0], fmt.Sprintf(":%d", rpc.SidecarSessionPort)) {
		conn, err = (&tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}).DialContext(ctx, "tcp", args[0])
	} else {
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", args[0])
	}
	if err != nil {
		fmt.Fprintln(out, "dial:", err)
		return nil
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(conn, cfg)
	if err != nil {
		return err
	}
	defer mux.Close()
	stream := func(dst netip.AddrPort) (net.Conn, error) {
		st, err := mux.OpenStream()
		if err != nil {
			return nil, err
		}
		_ = st.SetDeadline(time.Now().Add(20 * time.Second))
		if err := rpc.WriteHeader(st, rpc.Header{Kind: rpc.KindTCP, Dst: dst, Flow: 1}); err != nil {
			st.Close()
			return nil, err
		}
		if err := rpc.ReadStatus(st); err != nil {
			st.Close()
			return nil, err
		}
		return st, nil
	}
	say := func(err error) {
		var s rpc.Status
		switch {
		case err == nil:
			fmt.Fprintln(out, "ok")
		case errors.As(err, &s):
			fmt.Fprintln(out, "status:", s.Error())
		default:
			if st, ok := status.FromError(err); ok {
				fmt.Fprintln(out, "grpc:", st.Code().String(), st.Message())
				return
			}
			fmt.Fprintln(out, "error:", err)
		}
	}
	switch args[1] {
	case "tcp", "streams":
		if len(args) < 3 {
			return errors.New("usage: manager ADDR tcp DST")
		}
		dst, err := netip.ParseAddrPort(args[2])
		if err != nil {
			return err
		}
		n := 1
		if args[1] == "streams" && len(args) == 4 {
			if _, err := fmt.Sscan(args[3], &n); err != nil {
				return err
			}
		}
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		ok, failed := 0, 0
		var last error
		for range n {
			c, err := stream(dst)
			if err != nil {
				failed++
				last = err
				continue
			}
			ok++
			held = append(held, c)
		}
		if n == 1 {
			say(last)
			return nil
		}
		fmt.Fprintf(out, "streams open: %d, refused: %d\n", ok, failed)
		return nil
	case "watch-cluster", "list":
		cc, err := rpc.DialControl(mux)
		if err != nil {
			return err
		}
		defer cc.Close()
		ctl := managerpb.NewManagerClient(cc)
		if args[1] == "list" {
			_, err = ctl.ListIntercepts(ctx, &managerpb.ListInterceptsRequest{})
		} else {
			var w managerpb.Manager_WatchClusterClient
			if w, err = ctl.WatchCluster(ctx, &managerpb.WatchClusterRequest{}); err == nil {
				_, err = w.Recv()
			}
		}
		say(err)
		return nil
	}
	return fmt.Errorf("unknown manager verb %q", args[1])
}
