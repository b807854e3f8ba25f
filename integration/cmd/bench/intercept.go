//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"tunnel.dev/tunnel/integration/lab"
)

func printIntercept(n int, appP50, appP99 float64, ic interceptResult) {
	gbps := func(v float64) string { return fmt.Sprintf("%.2f GB/s", v/1e9) }
	ms := func(us float64) string { return fmt.Sprintf("%.2f ms", us/1000) }
	ratio := func(a, b float64) string { return fmt.Sprintf("%.2fx", a/b) }
	printTable([][]string{
		{"intercept (client on the node)", "to the app pod", "kubectl port-forward", "to the laptop: spares", "ratio", "over WireGuard (no spares)", "ratio"},
		{fmt.Sprintf("HTTP request p50 (%d, new connection each)", n), ms(appP50), "",
			ms(ic.spares.p50), ratio(ic.spares.p50, appP50) + " of the app", ms(ic.wg.p50), ratio(ic.wg.p50, appP50) + " of the app"},
		{fmt.Sprintf("HTTP request p99 (%d)", n), ms(appP99), "",
			ms(ic.spares.p99), ratio(ic.spares.p99, appP99) + " of the app", ms(ic.wg.p99), ratio(ic.wg.p99, appP99) + " of the app"},
		{fmt.Sprintf("HTTP upload to the laptop (%d MiB, median of %d)", ic.size>>20, uploadRounds), "", gbps(ic.pfUp),
			gbps(ic.spares.up), ratio(ic.spares.up, ic.pfUp) + " of port-forward", gbps(ic.wg.up), ratio(ic.wg.up, ic.pfUp) + " of port-forward"},
	})
}

type interceptResult struct {
	spares, wg interceptPath
	pfUp       float64
	size       int64
}

// interceptPath is what one way to the laptop measured.
type interceptPath struct{ p50, p99, up float64 }

// interceptFigures intercepts the test app's Service to a server in a
// laptop and measures, from the node (a client in the cluster), request
// latency and uploads through the intercept, two ways:
//   - the bench laptop's admin, whose daemon keeps spares at the sidecar
//     (the sidecar's connections to it cross the API server), against the
//     same upload from the laptop to the pod through kubectl port-forward,
//     which carries the same bytes over the same path the other way;
//   - a user who may intercept but not port-forward, who gets no spares,
//     so that the manager carries each connection to the laptop over
//     WireGuard.
func (b *bench) interceptFigures(ctx context.Context) (interceptResult, error) {
	r := interceptResult{size: 256 << 20}
	svc, leave, err := b.interceptTo(ctx, b.laptop, 7090)
	if err != nil {
		return r, err
	}
	defer leave()
	if r.spares.p50, r.spares.p99, err = b.interceptLatency(ctx, svc); err != nil {
		return r, err
	}
	// The sidecar's rollout replaced the pod.
	pod, err := b.sh(ctx, b.node, fmt.Sprintf("kubectl get pods -n %s -l app=echo --field-selector status.phase=Running -o jsonpath='{.items[0].metadata.name}'", b.ns))
	if err != nil {
		return r, err
	}
	// Rounds alternate the two paths, and each figure is its median: one
	// upload of each on a busy two-core machine can be off by a fifth.
	var ups, pfUps []float64
	for round := 1; round <= uploadRounds; round++ {
		up, err := b.interceptUpload(ctx, svc, r.size, "over spares", round)
		if err != nil {
			return r, err
		}
		pfUp, err := b.portForwardUpload(ctx, strings.TrimSpace(lastLine(pod)), r.size, round)
		if err != nil {
			return r, err
		}
		fmt.Fprintf(os.Stderr, "round %d: intercept %.2f GB/s, port-forward %.2f GB/s (%.2fx)\n", round, up/1e9, pfUp/1e9, up/pfUp)
		ups, pfUps = append(ups, up), append(pfUps, pfUp)
	}
	r.spares.up, r.pfUp = median(ups), median(pfUps)
	leave()
	r.wg, err = b.wireguardIntercept(ctx, r.size)
	return r, err
}

// wireguardIntercept measures the intercept of a user without
// pods/portforward, on a laptop of their own, and checks with the
// manager's counters that its connections went over WireGuard.
func (b *bench) wireguardIntercept(ctx context.Context, size int64) (interceptPath, error) {
	var p interceptPath
	if err := lab.GrantInterceptOnly(ctx, b.cs, b.ns, "dev"); err != nil {
		return p, err
	}
	dev := lab.ExecOptions{Laptop: "benchdev", User: "dev"}
	_, _ = b.l.Run(ctx, dev, b.tunnel, "quit")
	defer b.l.Run(context.WithoutCancel(ctx), dev, b.tunnel, "quit")
	if out, err := b.l.Run(ctx, dev, b.tunnel, "connect", "-n", b.ns); err != nil {
		return p, fmt.Errorf("connect as dev: %w\n%s", err, out)
	}
	if _, err := b.waitPath(ctx, dev, "wireguard", 10*time.Second); err != nil {
		return p, err
	}
	svc, leave, err := b.interceptTo(ctx, dev, 7091)
	if err != nil {
		return p, err
	}
	defer leave()
	before, err := b.interceptStreams(ctx)
	if err != nil {
		return p, err
	}
	if p.p50, p.p99, err = b.interceptLatency(ctx, svc); err != nil {
		return p, err
	}
	var ups []float64
	for round := 1; round <= uploadRounds; round++ {
		up, err := b.interceptUpload(ctx, svc, size, "over WireGuard", round)
		if err != nil {
			return p, err
		}
		fmt.Fprintf(os.Stderr, "round %d: intercept over WireGuard %.2f GB/s\n", round, up/1e9)
		ups = append(ups, up)
	}
	p.up = median(ups)
	after, err := b.interceptStreams(ctx)
	if err != nil {
		return p, err
	}
	wg, sess := after["wireguard"]-before["wireguard"], after["session"]-before["session"]
	fmt.Fprintf(os.Stderr, "the manager carried %.0f intercepted connections over WireGuard, %.0f over the session\n", wg, sess)
	if wg == 0 || sess > 0 {
		return p, fmt.Errorf("the intercept without spares did not go over WireGuard: %.0f connections over it, %.0f over the session", wg, sess)
	}
	return p, nil
}

// interceptTo starts the test app as the local server in laptop on port,
// intercepts the echo Service to it, and waits until the Service answers
// from the laptop. It returns the Service's URL and a function that
// leaves the intercept and stops the server (once, however often called).
func (b *bench) interceptTo(ctx context.Context, laptop lab.ExecOptions, port int) (svc string, leave func(), err error) {
	srv, err := lab.Command(ctx, b.l.Paths, laptop, "env", "POD_NAME=laptop-bench", b.echo,
		"--http", fmt.Sprintf("127.0.0.1:%d", port), "--http2", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	if err := srv.Start(); err != nil {
		return "", nil, err
	}
	intercepted := false
	done := false
	leave = func() {
		if done {
			return
		}
		done = true
		if intercepted {
			_, _ = b.l.Run(context.WithoutCancel(ctx), laptop, b.tunnel, "leave", "echo-http", "-n", b.ns)
		}
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}
	fail := func(err error) (string, func(), error) { leave(); return "", nil, err }
	if _, err := b.sh(ctx, laptop, fmt.Sprintf("for i in $(seq 1 50); do curl -sf --max-time 1 http://127.0.0.1:%d/healthz >/dev/null && exit 0; sleep 0.1; done; exit 1", port)); err != nil {
		return fail(err)
	}
	if out, err := b.l.Run(ctx, laptop, b.tunnel, "intercept", "echo", "-n", b.ns, "--port", fmt.Sprintf("%d:http", port)); err != nil {
		return fail(fmt.Errorf("intercept: %w\n%s", err, out))
	}
	intercepted = true
	ip, err := b.sh(ctx, b.node, fmt.Sprintf("kubectl get svc -n %s echo -o jsonpath='{.spec.clusterIP}'", b.ns))
	if err != nil {
		return fail(err)
	}
	svc = "http://" + strings.TrimSpace(lastLine(ip))
	if out, err := b.sh(ctx, b.node, fmt.Sprintf("%s get %s/", b.echo, svc)); err != nil || !strings.Contains(out, "laptop-bench") {
		return fail(fmt.Errorf("the intercept does not answer: %v %s", err, out))
	}
	return svc, leave, nil
}

// interceptLatency is the p50 and p99 of requests from the node to svc,
// in microseconds, each on a new connection.
func (b *bench) interceptLatency(ctx context.Context, svc string) (p50, p99 float64, err error) {
	out, err := b.sh(ctx, b.node, fmt.Sprintf("%s latency %s/ %d", b.echo, svc, b.latN))
	if err != nil {
		return 0, 0, err
	}
	f := figures(out)
	return f["p50_us"], f["p99_us"], nil
}

// interceptStreams reads the manager's count of intercepted connections
// it carried to laptops, by path.
func (b *bench) interceptStreams(ctx context.Context) (map[string]float64, error) {
	out, err := b.sh(ctx, b.node, "kubectl get --raw /api/v1/namespaces/tunnel-system/services/tunnel-manager:metrics/proxy/metrics")
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, path := range []string{"wireguard", "session"} {
		m[path] = figures(strings.ReplaceAll(out, `tunnel_manager_intercept_streams_total{path="`+path+`"} `, "streams_"+path+"="))["streams_"+path]
	}
	return m, nil
}

// uploadRounds is how many uploads of each path the figures take the
// median of.
const uploadRounds = 5

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// interceptUpload uploads size bytes from the node to the intercepted
// Service, whose laptop server discards them; the first round may be
// recorded with perf. way names the path to the laptop in the CPU table;
// only the spares' first round is recorded.
func (b *bench) interceptUpload(ctx context.Context, svc string, size int64, way string, round int) (float64, error) {
	stopPerf := func() {}
	if round == 1 && way == "over spares" {
		var err error
		if stopPerf, err = startPerf(b.perf); err != nil {
			return 0, err
		}
	}
	before := cpuTimes()
	out, err := b.sh(ctx, b.node, fmt.Sprintf("%s upload %s/upload %d", b.echo, svc, size))
	stopPerf()
	if err != nil {
		return 0, err
	}
	printCPU(os.Stderr, fmt.Sprintf("upload %d through the intercept %s", round, way), before, cpuTimes())
	return figures(out)["bytes_per_sec"], nil
}

// portForwardUpload uploads size bytes from the laptop to the app pod
// through kubectl port-forward, which carries them over the same API
// server and kubelet path the other way.
func (b *bench) portForwardUpload(ctx context.Context, pod string, size int64, round int) (float64, error) {
	const port = 18081
	stopPerf := func() {}
	if round == 1 && b.perf != "" {
		var err error
		if stopPerf, err = startPerf(b.perf + ".port-forward"); err != nil {
			return 0, err
		}
	}
	defer stopPerf()
	before := cpuTimes()
	out, err := b.sh(ctx, b.laptop, fmt.Sprintf(`kubectl port-forward -n %s pod/%s %d:%d >/dev/null 2>&1 &
pf=$!
trap 'kill $pf' EXIT
for i in $(seq 1 100); do curl -sf --max-time 1 http://127.0.0.1:%d/healthz >/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$pf/stat; }
a=$(cpu)
%s upload http://127.0.0.1:%d/upload %d
echo kubectl_ticks=$(( $(cpu) - a ))`, b.ns, pod, port, lab.EchoHTTPPort, port, b.echo, port, size))
	if err != nil {
		return 0, err
	}
	after := cpuTimes()
	// kubectl is gone by now: it measured itself.
	after["kubectl port-forward"] = before["kubectl port-forward"] + time.Duration(figures(out)["kubectl_ticks"])*10*time.Millisecond
	printCPU(os.Stderr, fmt.Sprintf("upload %d through kubectl port-forward", round), before, after)
	return figures(out)["bytes_per_sec"], nil
}
