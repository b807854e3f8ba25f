//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// dnsResult is what the laptop's resolver measured, in µs.
type dnsResult struct {
	cold, cached, refreshed float64 // lookup p50s
	byName, byHosts, byIP   float64 // curl p50s to one Service
}

// byNameCurls is how many curls by name, by a name in /etc/hosts and by
// address the by-name row takes.
const byNameCurls = 300

// dnsFigures measures lookups through the laptop's system resolver: of
// names never asked before, of one name asked again at once, and of one
// name asked 700 ms apart (its cached answer old enough to be refreshed
// each time); then curls to the test app's Service by name and by address,
// alternating, one at a time, as the issue on names measures them, and by a
// name in the laptop's /etc/hosts: the least any name costs curl and glibc
// on this machine, which no resolver can go under.
func (b *bench) dnsFigures(ctx context.Context) (dnsResult, error) {
	var r dnsResult
	for _, m := range []struct {
		mode, n, name string
		into          *float64
	}{
		{"cold", "500", fmt.Sprintf("%s.pod.%s", b.ns, b.domain), &r.cold},
		{"cached", "500", fmt.Sprintf("echo.%s.svc.%s", b.ns, b.domain), &r.cached},
		{"refreshed", "20", fmt.Sprintf("echo.%s.svc.%s", b.ns, b.domain), &r.refreshed},
	} {
		out, err := b.sh(ctx, b.laptop, fmt.Sprintf("%s dns %s %s %s", b.echo, m.mode, m.n, m.name))
		if err != nil {
			return r, err
		}
		*m.into = figures(out)["p50_us"]
	}
	ip, err := b.sh(ctx, b.node, fmt.Sprintf("kubectl get svc -n %s echo -o jsonpath='{.spec.clusterIP}'", b.ns))
	if err != nil {
		return r, err
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(lastLine(ip)))
	if err != nil {
		return r, fmt.Errorf("the echo Service's address: %w", err)
	}
	const hostsName = "echo-by-hosts"
	remove, err := b.l.HostsEntry(ctx, b.laptop.Laptop, hostsName, addr)
	if err != nil {
		return r, err
	}
	defer remove()
	out, err := b.sh(ctx, b.laptop, fmt.Sprintf(`for i in $(seq 1 %d); do
curl -sf -o /dev/null -w 'name %%{time_total}\n' http://echo.%s/ || exit 1
curl -sf -o /dev/null -w 'ip %%{time_total}\n' http://%s/ || exit 1
curl -sf -o /dev/null -w 'hosts %%{time_total}\n' http://%s/ || exit 1
done`, byNameCurls, b.ns, addr, hostsName))
	if err != nil {
		return r, err
	}
	times := map[string][]float64{}
	for _, line := range strings.Split(out, "\n") {
		way, secs, ok := strings.Cut(strings.TrimSpace(line), " ")
		if v, err := strconv.ParseFloat(secs, 64); ok && err == nil {
			times[way] = append(times[way], v*1e6)
		}
	}
	if len(times["name"]) != byNameCurls || len(times["ip"]) != byNameCurls || len(times["hosts"]) != byNameCurls {
		return r, fmt.Errorf("by name, by address and by /etc/hosts: %d, %d and %d curls timed, want %d each",
			len(times["name"]), len(times["ip"]), len(times["hosts"]), byNameCurls)
	}
	r.byName, r.byHosts, r.byIP = median(times["name"]), median(times["hosts"]), median(times["ip"])
	return r, nil
}

func (d dnsResult) byNameCell() string {
	return fmt.Sprintf("%.2f ms / %.2f ms (%+.2f ms)", d.byName/1000, d.byIP/1000, (d.byName-d.byIP)/1000)
}

// byHostsCell is the floor: a name glibc finds in /etc/hosts, and what our
// resolver costs over it.
func (d dnsResult) byHostsCell() string {
	return fmt.Sprintf("%.2f ms (%+.2f ms over the address; by name %+.2f ms over it)", d.byHosts/1000, (d.byHosts-d.byIP)/1000, (d.byName-d.byHosts)/1000)
}

// dnsRows is the table -only dns prints.
func dnsRows(d dnsResult) [][]string {
	ms := func(us float64) string { return fmt.Sprintf("%.2f ms", us/1000) }
	return [][]string{
		{"names (tunnel, WireGuard)", "p50"},
		{"DNS lookup, cached", ms(d.cached)},
		{"DNS lookup, refreshed (700 ms apart)", ms(d.refreshed)},
		{"DNS lookup, cold", ms(d.cold)},
		{fmt.Sprintf("curl by name / by address (%d each, alternating)", byNameCurls), d.byNameCell()},
		{"curl by a name in /etc/hosts (the floor, in the same loop)", d.byHostsCell()},
	}
}
