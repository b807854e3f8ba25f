// Command testapp is the workload the end-to-end tests deploy: HTTP on two
// ports, a TCP echo and a UDP echo, all from one static binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config holds the listen addresses and the name reported in HTTP bodies.
type config struct {
	HTTPAddr  string
	HTTP2Addr string
	TCPAddr   string
	UDPAddr   string
	Metrics   string
	PodName   string
}

// listeners are the bound sockets serve runs on; tests bind them to
// 127.0.0.1:0 so they can learn the ports.
type listeners struct {
	HTTP  net.Listener
	HTTP2 net.Listener
	TCP   net.Listener
	UDP   net.PacketConn
	// Metrics serves /metrics on a port of its own, which no Service
	// names: an intercept never takes Prometheus' scrapes to a laptop.
	Metrics net.Listener // nil in the unit tests, which serve none
}

func main() {
	// Client verbs let a pod of this image check the cluster from inside:
	// the image has no shell, dig or curl.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "lookup", "get", "tcp", "udp":
			if err := client(context.Background(), os.Stdout, os.Args[1], os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		case "hold", "flood":
			f := hold
			if os.Args[1] == "flood" {
				f = flood
			}
			if err := f(context.Background(), os.Stdout, os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		case "manager":
			if err := managerClient(context.Background(), os.Stdout, os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		case "load":
			if err := load(context.Background(), os.Stdout, os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		case "spare":
			if err := spare(context.Background(), os.Stdout, os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		case "latency", "download", "upload", "conns", "dns":
			if err := measure(context.Background(), os.Stdout, os.Args[1], os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			return
		}
	}
	var cfg config
	flag.StringVar(&cfg.HTTPAddr, "http", ":8080", "HTTP listen address")
	flag.StringVar(&cfg.HTTP2Addr, "http2", ":8081", "second HTTP listen address, for multi-port Services")
	flag.StringVar(&cfg.TCPAddr, "tcp", ":9000", "TCP echo listen address")
	flag.StringVar(&cfg.UDPAddr, "udp", ":9001", "UDP echo listen address")
	flag.StringVar(&cfg.Metrics, "metrics", ":9102", "Prometheus metrics listen address")
	flag.Parse()
	cfg.PodName = podName()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("testapp failed", "err", err)
		os.Exit(1)
	}
}

// podName prefers the downward-API POD_NAME so answers identify the pod even
// when the hostname is shared (hostNetwork).
func podName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "unknown"
}

// run binds every address in cfg and serves until ctx is done.
func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	var (
		lc       net.ListenConfig
		ls       listeners
		err      error
		opened   []io.Closer
		closeAll = func() {
			for _, c := range opened {
				_ = c.Close()
			}
		}
	)
	for _, l := range []struct {
		name, addr string
		dst        *net.Listener
	}{
		{"http", cfg.HTTPAddr, &ls.HTTP},
		{"http2", cfg.HTTP2Addr, &ls.HTTP2},
		{"tcp", cfg.TCPAddr, &ls.TCP},
		{"metrics", cfg.Metrics, &ls.Metrics},
	} {
		if *l.dst, err = lc.Listen(ctx, "tcp", l.addr); err != nil {
			closeAll()
			return fmt.Errorf("listen %s %s: %w", l.name, l.addr, err)
		}
		opened = append(opened, *l.dst)
	}
	if ls.UDP, err = lc.ListenPacket(ctx, "udp", cfg.UDPAddr); err != nil {
		closeAll()
		return fmt.Errorf("listen udp %s: %w", cfg.UDPAddr, err)
	}
	return serve(ctx, cfg.PodName, ls, logger)
}

// serve runs all four servers on ls until ctx is done or one of them fails;
// a failure stops the others so the pod restarts instead of half-working.
func serve(ctx context.Context, pod string, ls listeners, logger *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	logger.Info("testapp started", "pod", pod,
		"http", ls.HTTP.Addr().String(), "http2", ls.HTTP2.Addr().String(),
		"tcp", ls.TCP.Addr().String(), "udp", ls.UDP.LocalAddr().String())

	h, metrics, err := withOrders(newHTTPHandler(pod), os.Getenv)
	if err != nil {
		return err
	}
	if h, err = withFaults(h, os.Getenv); err != nil {
		return err
	}
	if os.Getenv("LOG_REQUESTS") != "" {
		// A laptop's stand-in server in the tests says what reached it.
		next := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			logger.Info("request", "method", r.Method, "path", r.URL.Path, "proto", r.Proto)
			next.ServeHTTP(w, r)
		})
	}
	// IDLE_TIMEOUT closes kept-alive connections that idle that long, as
	// many servers (gunicorn, Node) do.
	var idle time.Duration
	if v := os.Getenv("IDLE_TIMEOUT"); v != "" {
		if idle, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("IDLE_TIMEOUT: %w", err)
		}
	}
	tasks := []func() error{
		func() error { return serveHTTP(ctx, ls.HTTP, h, idle) },
		func() error { return serveHTTP(ctx, ls.HTTP2, h, idle) },
		func() error { return serveTCPEcho(ctx, ls.TCP) },
		func() error { return serveUDPEcho(ctx, ls.UDP) },
	}
	if ls.Metrics != nil {
		tasks = append(tasks, func() error { return serveHTTP(ctx, ls.Metrics, metrics, 0) })
	}
	errc := make(chan error, len(tasks))
	for _, task := range tasks {
		go func() {
			err := task()
			if err != nil {
				cancel()
			}
			errc <- err
		}()
	}
	var errs []error
	for range tasks {
		errs = append(errs, <-errc)
	}
	logger.Info("testapp stopped")
	return errors.Join(errs...)
}
