package canary

import (
	"fmt"
	"regexp"
	"strings"
)

// Match picks the requests a dark launch sends to the canary whatever the
// weight: those with a header or a cookie of a value, or of a value a
// regular expression matches as a whole.
type Match struct {
	Cookie bool   // a cookie named Name, else a header
	Name   string // the header's or the cookie's name
	Value  string // the exact value, or the expression when Regex
	Regex  bool
}

// ParseMatch reads --match: header:NAME=VALUE, cookie:NAME=VALUE, or with
// =~ a regular expression (RE2, as Envoy and Traefik read it) that must
// match the whole value.
func ParseMatch(s string) (*Match, error) {
	kind, rest, _ := strings.Cut(s, ":")
	m := &Match{Cookie: kind == "cookie"}
	if kind != "header" && kind != "cookie" {
		return nil, fmt.Errorf("--match %s: want header:NAME=VALUE or cookie:NAME=VALUE (=~ for a regular expression)", s)
	}
	name, value, ok := strings.Cut(rest, "=")
	if !ok {
		return nil, fmt.Errorf("--match %s: want %s:NAME=VALUE or %s:NAME=~REGEX", s, kind, kind)
	}
	m.Name = name
	if strings.HasPrefix(value, "~") {
		m.Regex, value = true, value[1:]
	}
	m.Value = value
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("--match %s: %w", s, err)
	}
	return m, nil
}

// token is an HTTP field or cookie name (RFC 9110's token), which is also
// the pattern the Gateway API allows for a header name.
var token = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

// cookieValue is what RFC 6265 lets a cookie's value hold.
var cookieValue = regexp.MustCompile(`^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$`)

func (m *Match) check() error {
	what := "header"
	if m.Cookie {
		what = "cookie"
	}
	switch {
	case !token.MatchString(m.Name) || len(m.Name) > 256:
		return fmt.Errorf("%q is not a %s name", m.Name, what)
	case m.Value == "":
		return fmt.Errorf("the %s's value is empty", what)
	case len(m.Value) > 1024:
		return fmt.Errorf("the %s's value is longer than 1024 bytes", what)
	case !plain.MatchString(m.Value):
		// A gateway writes the value into rules of its own syntax
		// (Traefik's quote with backticks): nothing but printable ASCII.
		return fmt.Errorf("%q holds a character other than printable ASCII, or a backtick", m.Value)
	case m.Regex:
		re, err := regexp.Compile(m.Value)
		if err != nil {
			return fmt.Errorf("%q is not a regular expression: %w", m.Value, err)
		}
		if re.MatchString("") {
			return fmt.Errorf("%q matches an empty value, so it would pick every request", m.Value)
		}
		if m.Cookie && strings.ContainsAny(m.Value, "^$") {
			return fmt.Errorf("%q: a cookie's expression is anchored to its value already; leave out ^ and $", m.Value)
		}
	case m.Cookie && !cookieValue.MatchString(m.Value):
		return fmt.Errorf("%q is not a cookie value", m.Value)
	}
	switch {
	case !m.Cookie && strings.EqualFold(m.Name, "cookie"):
		return fmt.Errorf("match a cookie with cookie:NAME=VALUE, not the Cookie header")
	case !m.Cookie && everyRequest[strings.ToLower(m.Name)]:
		return fmt.Errorf("header %s comes with every request (or the gateway sets it), so it cannot pick a cohort", m.Name)
	}
	return nil
}

// plain is printable ASCII but the backtick.
var plain = regexp.MustCompile("^[\x20-\x5F\x61-\x7E]*$")

// everyRequest are headers that clients or gateways put on every request.
var everyRequest = map[string]bool{
	"host": true, "user-agent": true, "accept": true, "x-request-id": true, "x-forwarded-for": true,
	"x-forwarded-proto": true, "x-forwarded-host": true, "x-forwarded-port": true, "x-real-ip": true,
	"forwarded": true, "x-envoy-external-address": true, "traceparent": true, "content-length": true,
}

// String is the match as --match reads it.
func (m *Match) String() string {
	kind, op := "header", "="
	if m.Cookie {
		kind = "cookie"
	}
	if m.Regex {
		op = "=~"
	}
	return kind + ":" + m.Name + op + m.Value
}

// Describe is the match in words: "requests with header x-beta=1".
func (m *Match) Describe() string {
	kind := "header"
	if m.Cookie {
		kind = "cookie"
	}
	if m.Regex {
		return fmt.Sprintf("requests with %s %s matching %s", kind, m.Name, m.Value)
	}
	return fmt.Sprintf("requests with %s %s=%s", kind, m.Name, m.Value)
}

// Header is the request header and the value that a gateway matches: the
// header itself, or for a cookie the Cookie header, by an expression
// anchored at both ends so that it means the same to gateways that match
// a whole value (Envoy) and to those that find it anywhere (Traefik).
func (m *Match) Header() (name, value string, regex bool) {
	switch {
	case m.Cookie:
		v := regexp.QuoteMeta(m.Value)
		if m.Regex {
			v = "(?:" + m.Value + ")"
		}
		return "Cookie", `^(?:.*;\s*)?` + regexp.QuoteMeta(m.Name) + "=" + v + `(?:\s*;.*)?$`, true
	case m.Regex:
		return m.Name, "^(?:" + m.Value + ")$", true
	}
	return m.Name, m.Value, false
}
