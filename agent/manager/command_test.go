package manager

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

func TestCommandFlags(t *testing.T) {
	cmd := Command()
	d := Config{}.withDefaults()
	for flag, want := range map[string]string{
		"listen":           d.Listen,
		"metrics-addr":     d.MetricsAddr,
		"resolv-conf":      d.ResolvConf,
		"dial-timeout":     d.DialTimeout.String(),
		"udp-idle-timeout": d.UDPIdleTimeout.String(),
		"header-timeout":   d.HeaderTimeout.String(),
		"keepalive":        d.KeepAlive.String(),
		"dns-timeout":      d.DNSTimeout.String(),
		"log-level":        "INFO",
	} {
		f := cmd.Flags().Lookup(flag)
		if f == nil {
			t.Errorf("no --%s", flag)
			continue
		}
		if f.DefValue != want {
			t.Errorf("--%s defaults to %q, want %q", flag, f.DefValue, want)
		}
	}
	if cmd.Flags().Lookup("allow-loopback") != nil {
		t.Error("AllowLoopback must not be a flag: it is for tests only")
	}
}

func TestCommandOutsideACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	cmd := Command()
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"})
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("outside a cluster: %v, want an error about the in-cluster configuration", err)
	}
}

func TestCommandRejectsBadLogLevel(t *testing.T) {
	cmd := Command()
	cmd.SetErr(io.Discard)
	cmd.SetOut(io.Discard)
	cmd.SetArgs([]string{"--log-level", "loud"})
	if err := cmd.ExecuteContext(context.Background()); err == nil {
		t.Error("--log-level loud accepted")
	}
}

// TestServeCluster runs what the subcommand runs, against a fake cluster:
// metrics and sessions answer, and everything stops with ctx.
func TestServeCluster(t *testing.T) {
	sessions, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{ResolvConf: writeResolvConf(t, startDNS(t, testDNSHandler))}
	cs := fakeCluster(true, node("n1", "10.244.0.0/24"), namespace("default"), serviceCIDR("kubernetes", "10.96.0.0/12"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveCluster(ctx, testLogger(t), workload.Client{CS: cs}, cfg, []net.Listener{sessions}, metrics, wgFlags{})
	}()

	hc := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	eventually(t, "/healthz", func() bool {
		resp, err = hc.Get("http://" + metrics.Addr().String() + "/healthz")
		return err == nil
	})
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}

	ctl := controlClient(t, laptop(t, sessions.Addr().String()))
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	w, err := ctl.WatchCluster(wctx, &managerpb.WatchClusterRequest{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(info.GetPodSubnets(), ",") != "10.244.0.0/24" || strings.Join(info.GetServiceSubnets(), ",") != "10.96.0.0/12" ||
		strings.Join(info.GetNamespaces(), ",") != "default" || info.GetClusterDomain() != "cluster.test" {
		t.Errorf("ClusterInfo %v does not match the fake cluster", info)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveCluster: %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveCluster did not return")
	}
	hc.CloseIdleConnections()
}
