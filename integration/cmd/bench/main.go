//go:build linux

// Command bench measures tunnel against `kubectl port-forward` and the
// node's direct path in one run on the lab, and prints a table of figures
// and ratios (`make bench`). Nothing here asserts: it reports.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/integration/lab"
)

type bench struct {
	l       *lab.Lab
	cs      kubernetes.Interface
	tunnel  string
	echo    string
	laptop  lab.ExecOptions
	node    lab.ExecOptions
	podIP   string
	pod     string
	ns      string
	domain  string
	size    int64
	latN    int
	connsN  int
	results [][]string
	only    string
	laptops string // N,N,...: rows of laptops on one manager
	laptopN int    // requests per laptop in those rows
	perf    string // record a system-wide perf profile of the intercept upload here
}

func main() {
	b := &bench{node: lab.ExecOptions{}, laptop: lab.ExecOptions{Laptop: "bench"}, ns: "bench"}
	flag.Int64Var(&b.size, "bytes", 1<<30, "size of the bulk download")
	flag.IntVar(&b.latN, "requests", 2000, "small HTTP requests per path for the latency figures")
	flag.IntVar(&b.connsN, "conns", 1000, "concurrent TCP connections through the tunnel")
	flag.StringVar(&b.only, "only", "", "measure only this part: dns, intercept, shaped or laptops")
	flag.StringVar(&b.laptops, "laptops", "1,10,50", "how many laptops on one manager, per row of that table")
	flag.IntVar(&b.laptopN, "laptop-requests", 300, "requests each of those laptops makes")
	flag.StringVar(&b.perf, "perf", "", "record perf profiles (perf record -a -g) of the first uploads: through the intercept into this file, through kubectl port-forward into FILE.port-forward")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := b.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (b *bench) sh(ctx context.Context, opt lab.ExecOptions, script string) (string, error) {
	out, err := b.l.Run(ctx, opt, "sh", "-c", script)
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", script, err, out)
	}
	return out, nil
}

func (b *bench) run(ctx context.Context) error {
	b.l = lab.New(lab.DefaultPaths(), os.Stderr)
	if err := b.l.Up(ctx, lab.Config{}); err != nil {
		return err
	}
	cfg, _ := lab.LoadConfig(b.l.Paths)
	b.domain = cfg.ClusterDomain
	// The agent image of this tree in the lab's registry, and a tunnel
	// that installs it, as the e2e suite has them.
	h, err := lab.Attach(ctx, b.l, lab.Config{})
	if err != nil {
		return err
	}
	cs := h.Client
	b.cs = cs
	b.tunnel = b.l.Paths.State + "/bin/tunnel"
	if err := lab.BuildTunnel(ctx, h.Agent.Stamp, b.tunnel); err != nil {
		return err
	}
	b.echo = b.l.Paths.State + "/images/echo"
	_ = cs.CoreV1().Namespaces().Delete(ctx, b.ns, metav1.DeleteOptions{})
	for {
		if _, err := cs.CoreV1().Namespaces().Get(ctx, b.ns, metav1.GetOptions{}); err != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: b.ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	defer cs.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), b.ns, metav1.DeleteOptions{})
	if err := lab.DeployEcho(ctx, b.l, cs, b.ns, "echo", 1); err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods(b.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) != 1 {
		return fmt.Errorf("find the echo pod: %v", err)
	}
	b.pod, b.podIP = pods.Items[0].Name, pods.Items[0].Status.PodIP
	if _, err := b.l.Run(ctx, b.node, b.tunnel, "install", "--allow-user", "dev"); err != nil {
		return err
	}
	_, _ = b.l.Run(ctx, b.laptop, b.tunnel, "quit")
	defer b.l.Run(context.WithoutCancel(ctx), b.laptop, b.tunnel, "quit")

	if b.only == "laptops" {
		return b.laptopRows(ctx)
	}
	if b.only == "shaped" {
		return b.shapedRows(ctx)
	}
	if b.only == "dns" {
		if _, err := b.l.Run(ctx, b.laptop, b.tunnel, "connect", "-n", b.ns); err != nil {
			return err
		}
		d, err := b.dnsFigures(ctx)
		if err != nil {
			return err
		}
		printTable(dnsRows(d))
		return nil
	}
	if b.only == "intercept" {
		if _, err := b.l.Run(ctx, b.laptop, b.tunnel, "connect", "-n", b.ns); err != nil {
			return err
		}
		out, err := b.sh(ctx, b.node, fmt.Sprintf("%s latency http://%s:%d/ %d", b.echo, b.podIP, lab.EchoHTTPPort, b.latN))
		if err != nil {
			return err
		}
		f := figures(out)
		ic, err := b.interceptFigures(ctx)
		if err != nil {
			return err
		}
		printIntercept(b.latN, f["p50_us"], f["p99_us"], ic)
		return nil
	}
	fmt.Fprintln(os.Stderr, "==> connect to first curl by name, with UDP and without")
	if err := b.l.DropUDP(ctx, b.laptop.Laptop, true); err != nil {
		return err
	}
	noUDPMS, err := b.connectTime(ctx)
	b.l.DropUDP(context.WithoutCancel(ctx), b.laptop.Laptop, false)
	if err != nil {
		return err
	}
	noUDPPath, err := b.waitPath(ctx, b.laptop, "port-forward", 0)
	if err != nil {
		return err
	}
	_, _ = b.l.Run(ctx, b.laptop, b.tunnel, "quit")
	connectMS, err := b.connectTime(ctx)
	if err != nil {
		return err
	}
	idle, err := b.daemonRSS(ctx) // before any traffic grew its heap
	if err != nil {
		return err
	}
	wgUp, err := b.waitPath(ctx, b.laptop, "wireguard", 5*time.Second)
	if err != nil {
		return err
	}
	direct := fmt.Sprintf("http://%s:%d", b.podIP, lab.EchoHTTPPort)
	fmt.Fprintln(os.Stderr, "==> bulk download and request latency: direct, port-forward, tunnel over WireGuard")
	dDown, dP50, dP99, err := b.httpFigures(ctx, b.node, direct)
	if err != nil {
		return err
	}
	pDown, pP50, pP99, err := b.portForwardFigures(ctx)
	if err != nil {
		return err
	}
	wDown, wP50, wP99, err := b.httpFigures(ctx, b.laptop, direct)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "==> DNS, concurrent connections, daemon memory")
	dnsF, err := b.dnsFigures(ctx)
	if err != nil {
		return err
	}
	ok, busy, err := b.concurrent(ctx)
	if err != nil {
		return err
	}

	fmt.Fprintln(os.Stderr, "==> the same over the tunnel's port-forward path (connect --wireguard=false)")
	_, _ = b.l.Run(ctx, b.laptop, b.tunnel, "quit")
	if _, err := b.l.Run(ctx, b.laptop, b.tunnel, "connect", "-n", b.ns, "--wireguard=false"); err != nil {
		return err
	}
	tDown, tP50, tP99, err := b.httpFigures(ctx, b.laptop, direct)
	if err != nil {
		return err
	}
	okPF, _, err := b.concurrent(ctx)
	if err != nil {
		return err
	}

	fmt.Fprintln(os.Stderr, "==> intercept: requests from the node to the intercepted Service, an upload to the laptop")
	ic, err := b.interceptFigures(ctx)
	if err != nil {
		return err
	}

	gbps := func(v float64) string { return fmt.Sprintf("%.2f GB/s", v/1e9) }
	ms := func(us float64) string { return fmt.Sprintf("%.2f ms", us/1000) }
	ratio := func(a, b float64) string { return fmt.Sprintf("%.2fx", a/b) }
	rows := [][]string{
		{"measure", "direct (node to pod)", "kubectl port-forward", "tunnel, WireGuard", "tunnel, port-forward", "WireGuard / direct", "WireGuard / port-forward"},
		{fmt.Sprintf("bulk TCP download (%d MiB)", b.size>>20), gbps(dDown), gbps(pDown), gbps(wDown), gbps(tDown), ratio(wDown, dDown), ratio(wDown, pDown)},
		{fmt.Sprintf("HTTP request p50 (%d, new connection each)", b.latN), ms(dP50), ms(pP50), ms(wP50), ms(tP50), ratio(wP50, dP50), ratio(wP50, pP50)},
		{fmt.Sprintf("HTTP request p99 (%d)", b.latN), ms(dP99), ms(pP99), ms(wP99), ms(tP99), ratio(wP99, dP99), ratio(wP99, pP99)},
		{fmt.Sprintf("%d concurrent TCP connections", b.connsN), "", "", fmt.Sprintf("%d ok", ok), fmt.Sprintf("%d ok", okPF), "", ""},
		{"connect to first curl by name (manager installed)", "", "", fmt.Sprintf("%d ms (WireGuard up %d ms later)", connectMS, wgUp.Milliseconds()),
			fmt.Sprintf("%d ms with UDP dropped (decided %d ms later)", noUDPMS, noUDPPath.Milliseconds()), "", ""},
		{"DNS lookup p50, cached / refreshed / cold", "", "", ms(dnsF.cached) + " / " + ms(dnsF.refreshed) + " / " + ms(dnsF.cold), "", "", ""},
		{fmt.Sprintf("curl p50 by name / by address (%d each, alternating)", byNameCurls), "", "", dnsF.byNameCell(), "", "", ""},
		{"curl p50 by a name in /etc/hosts (the floor, same loop)", "", "", dnsF.byHostsCell(), "", "", ""},
		{fmt.Sprintf("daemon RSS, idle / %d connections open", b.connsN), "", "", fmt.Sprintf("%d MB / %d MB", idle>>10, busy>>10), "", "", ""},
	}
	printTable(rows)
	fmt.Println()
	printIntercept(b.latN, dP50, dP99, ic)
	fmt.Println()
	if err := b.shapedRows(ctx); err != nil {
		return err
	}
	fmt.Println()
	return b.laptopRows(ctx)
}

// laptopRows measures and prints the many-laptops table.
func (b *bench) laptopRows(ctx context.Context) error {
	var rows []laptopsResult
	for _, f := range strings.Split(b.laptops, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-laptops %q: want counts such as 1,10,50", b.laptops)
		}
		fmt.Fprintf(os.Stderr, "==> %d laptops on one manager\n", n)
		r, err := b.manyLaptops(ctx, n, b.laptopN)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	printLaptops(rows, b.laptopN)
	return nil
}

// connectTime is from `tunnel connect` (daemon start included) to the first
// successful curl of a Service by name.
func (b *bench) connectTime(ctx context.Context) (int64, error) {
	out, err := b.sh(ctx, b.laptop, fmt.Sprintf(`start=$(date +%%s%%N)
%s connect -n %s >/dev/null || exit 1
i=0; until curl -sf --max-time 2 http://echo.%s/ >/dev/null; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.01; done
echo $(( ($(date +%%s%%N) - start) / 1000000 ))`, b.tunnel, b.ns, b.ns))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(lastLine(out)), 10, 64)
}

// shapedRows measures both of the tunnel's paths over a laptop link with a
// 20 ms round trip and 0, 1 and 3% loss each way (lab shape), in one run.
func (b *bench) shapedRows(ctx context.Context) error {
	const size = 32 << 20
	// The intercepts' table restarted the pod: ask its address anew.
	pods, err := b.cs.CoreV1().Pods(b.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) == 0 {
		return fmt.Errorf("find the echo pod: %v", err)
	}
	direct := fmt.Sprintf("http://%s:%d", pods.Items[0].Status.PodIP, lab.EchoHTTPPort)
	defer b.l.Shape(context.WithoutCancel(ctx), b.laptop.Laptop, lab.ShapeOptions{})
	rows := [][]string{{"20 ms round trip, loss each way", "default (the path it chose): download / p50 / p99", "port-forward: download / p50 / p99", "default / port-forward: download / p99"}}
	for _, loss := range []float64{0, 0.01, 0.03} {
		fmt.Fprintf(os.Stderr, "==> a 20 ms round trip with %.0f%% loss: both paths\n", loss*100)
		if err := b.l.Shape(ctx, b.laptop.Laptop, lab.ShapeOptions{RTT: 20 * time.Millisecond, Loss: loss}); err != nil {
			return err
		}
		var down, p50, p99 [2]float64
		var chosen string
		for i, flags := range [][]string{nil, {"--wireguard=false"}} {
			_, _ = b.l.Run(ctx, b.laptop, b.tunnel, "quit")
			if _, err := b.l.Run(ctx, b.laptop, append([]string{b.tunnel, "connect", "-n", b.ns}, flags...)...); err != nil {
				return err
			}
			if i == 0 {
				if _, err := b.waitPath(ctx, b.laptop, "wireguard", 10*time.Second); err != nil {
					return err
				}
				// The daemon judges the link by its probes' loss once it
				// has a hundred of them (10 s): measure what it chose, on
				// a lossy link once it chose (45 s at most).
				start := time.Now()
				for {
					if chosen, err = b.carrier(ctx); err != nil {
						return err
					}
					wait := 12 * time.Second
					if loss > 0 {
						wait = 45 * time.Second
					}
					if (loss > 0 && chosen == "port-forward") || time.Since(start) > wait {
						break
					}
					time.Sleep(500 * time.Millisecond)
				}
				chosen = fmt.Sprintf("%s, %.0f s after WireGuard came up", chosen, time.Since(start).Seconds())
			}
			out, err := b.sh(ctx, b.laptop, fmt.Sprintf("%s download '%s/bytes?n=%d' && %s latency %s/ %d", b.echo, direct, size, b.echo, direct, 200))
			if err != nil {
				return err
			}
			f := figures(out)
			down[i], p50[i], p99[i] = f["bytes_per_sec"], f["p50_us"], f["p99_us"]
		}
		cell := func(i int) string {
			return fmt.Sprintf("%.1f MB/s / %.1f ms / %.1f ms", down[i]/1e6, p50[i]/1000, p99[i]/1000)
		}
		rows = append(rows, []string{fmt.Sprintf("%.0f%%", loss*100), "(" + chosen + ") " + cell(0), cell(1),
			fmt.Sprintf("%.2fx / %.2fx", down[0]/down[1], p99[0]/p99[1])})
	}
	printTable(rows)
	return nil
}

// carrier is the path the laptop's new connections take now.
func (b *bench) carrier(ctx context.Context) (string, error) {
	c, _, err := b.path(ctx, b.laptop)
	return c, err
}

// path is what a laptop's status says of its path: the carrier and why.
func (b *bench) path(ctx context.Context, laptop lab.ExecOptions) (carrier, why string, err error) {
	out, err := b.l.Run(ctx, laptop, b.tunnel, "status", "-o", "json")
	if err != nil {
		return "", "", err
	}
	var st struct {
		Path struct{ Carrier, Why string } `json:"path"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return "", "", fmt.Errorf("status -o json: %w", err)
	}
	return st.Path.Carrier, st.Path.Why, nil
}

// waitPath waits for a laptop's path to be carrier ("wireguard" or
// "port-forward" for a decision: port-forward with a reason), for at most
// within (or 10 s), and says how long that took.
func (b *bench) waitPath(ctx context.Context, laptop lab.ExecOptions, carrier string, within time.Duration) (time.Duration, error) {
	if within == 0 {
		within = 10 * time.Second
	}
	start := time.Now()
	for time.Since(start) < within {
		c, why, err := b.path(ctx, laptop)
		if err != nil {
			return 0, err
		}
		if c == carrier && (carrier == "wireguard" || strings.Contains(why, "no answer")) {
			return time.Since(start), nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("the path did not become %s within %s", carrier, within)
}

var figure = regexp.MustCompile(`(\w+)=([0-9.]+)`)

func figures(out string) map[string]float64 {
	m := map[string]float64{}
	for _, f := range figure.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(f[2], 64)
		m[f[1]] = v
	}
	return m
}

func (b *bench) httpFigures(ctx context.Context, opt lab.ExecOptions, base string) (down, p50, p99 float64, err error) {
	out, err := b.sh(ctx, opt, fmt.Sprintf("%s download '%s/bytes?n=%d'", b.echo, base, b.size))
	if err != nil {
		return 0, 0, 0, err
	}
	down = figures(out)["bytes_per_sec"]
	out, err = b.sh(ctx, opt, fmt.Sprintf("%s latency %s/ %d", b.echo, base, b.latN))
	if err != nil {
		return 0, 0, 0, err
	}
	f := figures(out)
	return down, f["p50_us"], f["p99_us"], nil
}

// portForwardFigures measures kubectl port-forward to the same pod, from
// the same laptop, in the same run.
func (b *bench) portForwardFigures(ctx context.Context) (down, p50, p99 float64, err error) {
	const port = 18080
	out, err := b.sh(ctx, b.laptop, fmt.Sprintf(`kubectl port-forward -n %s pod/%s %d:%d >/dev/null 2>&1 &
pf=$!
trap 'kill $pf' EXIT
for i in $(seq 1 100); do curl -sf --max-time 1 http://127.0.0.1:%d/healthz >/dev/null && break; sleep 0.1; done
%s download 'http://127.0.0.1:%d/bytes?n=%d' && %s latency http://127.0.0.1:%d/ %d`,
		b.ns, b.pod, port, lab.EchoHTTPPort, port, b.echo, port, b.size, b.echo, port, b.latN))
	if err != nil {
		return 0, 0, 0, err
	}
	f := figures(out)
	return f["bytes_per_sec"], f["p50_us"], f["p99_us"], nil
}

// daemonRSS reads the daemon's resident memory in KiB; its pid is in the
// lock file of its run folder.
func (b *bench) daemonRSS(ctx context.Context) (int64, error) {
	out, err := b.sh(ctx, b.laptop, `pid=$(cat /run/tunnel/netns-$(readlink /proc/self/ns/net | tr -dc 0-9)/daemon.lock)
awk '/^VmRSS/ {print $2}' /proc/$pid/status`)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(lastLine(out)), 10, 64)
}

// concurrent holds connsN connections through the tunnel open for a few
// seconds and samples the daemon's memory meanwhile.
func (b *bench) concurrent(ctx context.Context) (int, int64, error) {
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := b.sh(ctx, b.laptop, fmt.Sprintf("%s conns %s:%d %d 6s", b.echo, b.podIP, lab.EchoTCPPort, b.connsN))
		done <- result{out, err}
	}()
	var peak int64
	for {
		select {
		case r := <-done:
			if r.err != nil {
				return 0, 0, r.err
			}
			return int(figures(r.out)["ok"]), peak, nil
		case <-time.After(500 * time.Millisecond):
			if rss, err := b.daemonRSS(ctx); err == nil && rss > peak {
				peak = rss
			}
		case <-ctx.Done():
			return 0, 0, errors.New("concurrent connections did not finish")
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func printTable(rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for i, r := range rows {
		var b strings.Builder
		b.WriteString("|")
		for j, c := range r {
			fmt.Fprintf(&b, " %-*s |", widths[j], c)
		}
		fmt.Println(b.String())
		if i == 0 {
			b.Reset()
			b.WriteString("|")
			for _, w := range widths {
				b.WriteString(" " + strings.Repeat("-", w) + " |")
			}
			fmt.Println(b.String())
		}
	}
}
