package dns

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
)

// markerPrefix starts every resolv.conf we write; finding it after a crash
// tells us the file is ours and the original is in the backup.
const markerPrefix = "# resolv.conf written by tunnel;"

// absentMarker is the backup of a resolv.conf that did not exist: restoring
// it removes ours.
var absentMarker = []byte("# tunnel: there was no resolv.conf here\n")

// hasMarker reports whether a resolv.conf is one we wrote.
func hasMarker(b []byte) bool {
	return bytes.HasPrefix(b, []byte(markerPrefix))
}

// resolvConf is the part of a resolv.conf we read.
type resolvConf struct {
	nameservers []netip.Addr
	search      []string
	options     []string // whole "options ..." lines, kept when we rewrite the file
}

// parseResolvConf reads resolv.conf the way glibc does: comments start with
// # or ;, the last of "search" and "domain" wins, unparsable lines are skipped.
func parseResolvConf(b []byte) resolvConf {
	var rc resolvConf
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		f := strings.Fields(line)
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				continue
			}
			if a, err := netip.ParseAddr(f[1]); err == nil {
				rc.nameservers = append(rc.nameservers, a)
			}
		case "search", "domain":
			rc.search = nil
			for _, d := range f[1:] {
				if d = strings.TrimSuffix(d, "."); d != "" {
					rc.search = append(rc.search, d)
				}
			}
		case "options":
			rc.options = append(rc.options, line)
		}
	}
	return rc
}

// formatResolvConf is the resolv.conf pointing at cfg, keeping the original's
// options (ndots, timeout, edns0, ...). Split DNS is not expressible here; the
// resolver does the split itself, so MatchDomains is ignored.
func formatResolvConf(cfg OSConfig, backupPath string, options []string) []byte {
	var b bytes.Buffer
	b.WriteString(markerPrefix + " the original is kept in " + backupPath + "\n")
	for _, a := range cfg.Nameservers {
		b.WriteString("nameserver " + a.String() + "\n")
	}
	var search []string
	for _, d := range cfg.SearchDomains {
		if d = strings.Trim(d, "."); d != "" {
			search = append(search, d)
		}
	}
	if len(search) > 0 {
		b.WriteString("search " + strings.Join(search, " ") + "\n")
	}
	for _, o := range options {
		b.WriteString(o + "\n")
	}
	return b.Bytes()
}
