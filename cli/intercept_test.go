package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

func TestParsePortFlag(t *testing.T) {
	for _, tc := range []struct {
		in     string
		local  uint32
		remote string
		bad    bool
	}{
		{"", 0, "", false},
		{"8080", 8080, "", false},
		{"8080:http", 8080, "http", false},
		{"7070:80", 7070, "80", false},
		{"http", 0, "", true},
		{"0:http", 0, "", true},
		{"70000", 0, "", true},
	} {
		local, remote, err := parsePortFlag(tc.in)
		if (err != nil) != tc.bad || local != tc.local || remote != tc.remote {
			t.Errorf("parsePortFlag(%q) = %d, %q, %v", tc.in, local, remote, err)
		}
	}
}

func TestParseHeader(t *testing.T) {
	n, v, err := parseHeader("x-dev=alice")
	if err != nil || n != "x-dev" || v != "alice" {
		t.Errorf("NAME=VALUE: %q %q %v", n, v, err)
	}
	// A value may hold '='.
	if _, v, _ := parseHeader("x-q=a=b"); v != "a=b" {
		t.Errorf("value with '=': %q", v)
	}
	// NAME alone: a value is made up, different each time.
	n, v1, err := parseHeader("x-dev")
	_, v2, _ := parseHeader("x-dev")
	if err != nil || n != "x-dev" || v1 == "" || v1 == v2 {
		t.Errorf("NAME alone: %q %q %q %v", n, v1, v2, err)
	}
	if n, v, err := parseHeader(autoHeader); err != nil || n == "" || v == "" {
		t.Errorf("auto: %q %q %v", n, v, err)
	}
	for _, bad := range []string{"=alice", "x dev=a", "x:dev=a"} {
		if _, _, err := parseHeader(bad); err == nil {
			t.Errorf("parseHeader(%q) accepted", bad)
		}
	}
}

func TestDefaultName(t *testing.T) {
	global := &managerpb.InterceptSpec{Mode: managerpb.InterceptMode_GLOBAL}
	if got := defaultName("echo", "http", 8080, global); got != "echo-http" {
		t.Errorf("global, named port: %q", got)
	}
	if got := defaultName("echo", "", 8080, global); got != "echo-8080" {
		t.Errorf("global, unnamed port: %q", got)
	}
	// Two laptops with one credential: their hosts differ, and so do their
	// names; the header's value, which others must not see, is not in it.
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	laptop := nameLabel(localUser() + "-" + host)
	personal := &managerpb.InterceptSpec{Mode: managerpb.InterceptMode_PERSONAL, HeaderName: "X-Tunnel-Dev", HeaderValue: "s3cret"}
	if got := defaultName("echo", "http", 8080, personal); got != "echo-http-"+laptop || strings.Contains(got, "s3cret") {
		t.Errorf("personal: %q, want echo-http-%s", got, laptop)
	}
	if got := defaultName("echo", "http", 8080, &managerpb.InterceptSpec{Mode: managerpb.InterceptMode_MIRROR}); got != "echo-http-"+laptop+"-mirror" {
		t.Errorf("mirror: %q, want the user and host appended", got)
	}
	// A long workload name gives way to the laptop's part.
	long := defaultName(strings.Repeat("w", 70), "http", 8080, personal)
	if len(long) > 63 || !strings.HasSuffix(long, "-http-"+laptop) {
		t.Errorf("a long name: %q (%d characters)", long, len(long))
	}
	// Two ports of a long workload keep names of their own.
	a, b := defaultName(strings.Repeat("w", 61), "http", 8080, global), defaultName(strings.Repeat("w", 61), "https", 8443, global)
	if a == b || len(a) > 63 || len(b) > 63 || !strings.HasSuffix(a, "-http") || !strings.HasSuffix(b, "-https") {
		t.Errorf("two ports of a long workload: %q, %q", a, b)
	}
	if got := nameLabel(strings.Repeat("a", 70) + "-"); len(got) != 63 {
		t.Errorf("a long label: %d characters", len(got))
	}
}

// The env file syntaxes must give back the exact values, quotes and
// newlines included, to the tools that read them.
func TestFormatEnv(t *testing.T) {
	env := map[string]string{"A": "plain", "Q": `it's "quoted" $HOME`, "N": "two\nlines", "E": ""}

	var back map[string]string
	if err := json.Unmarshal(formatEnv(env, "json"), &back); err != nil || len(back) != len(env) {
		t.Fatalf("json: %v %v", back, err)
	}
	for k, v := range env {
		if back[k] != v {
			t.Errorf("json %s: %q, want %q", k, back[k], v)
		}
	}

	if _, err := exec.LookPath("sh"); err == nil {
		script := string(formatEnv(env, "sh")) + `printf '%s|%s|%s|%s' "$A" "$Q" "$N" "$E"`
		out, err := exec.Command("sh", "-c", script).Output()
		if want := "plain|" + env["Q"] + "|two\nlines|"; err != nil || string(out) != want {
			t.Errorf("sh: %q (%v), want %q", out, err, want)
		}
	}

	docker := string(formatEnv(env, "docker"))
	for _, line := range []string{"A=plain", `Q=it's "quoted" $HOME`, `N=two\nlines`, "E="} {
		if !strings.Contains(docker, line+"\n") {
			t.Errorf("docker syntax lacks %q:\n%s", line, docker)
		}
	}
}

func TestPrintStatusNamesTheUserAndIntercepts(t *testing.T) {
	var b strings.Builder
	printStatus(&b, &daemonpb.StatusResponse{Connected: true, User: "dev", Intercepts: []*managerpb.Intercept{
		{Spec: &managerpb.InterceptSpec{Name: "echo-http", Namespace: "dev", Workload: "echo", Port: 8080, Mode: managerpb.InterceptMode_PERSONAL}},
	}})
	for _, want := range []string{"User:       dev", "Intercepts: echo-http: port 8080 of dev/echo, personal"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	printStatus(&b, &daemonpb.StatusResponse{Connected: true})
	if !strings.Contains(b.String(), "not verified") {
		t.Errorf("an unverified user is not said:\n%s", b.String())
	}
}

func TestOlder(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"v1.5.0", "v1.6.0", true},
		{"v1.6.0-3-gabcdef0", "v1.6.0", false}, // past the tag: not older
		{"v1.6.0", "v1.6.0-3-gabcdef0", false},
		{"v1.7.0", "v1.6.0", false},
		{"8b1a0d1", "v1.6.0", false},
	} {
		if got := older(tt.a, tt.b); got != tt.want {
			t.Errorf("older(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
