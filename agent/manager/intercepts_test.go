package manager

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// who makes a session as Hello leaves it: user "" is an unverified one.
func who(user, host string) *session {
	return &session{id: rand.Text()[:12], ident: Identity{User: user}, host: host}
}

func global(name, workload string, port uint32) *managerpb.InterceptSpec {
	return &managerpb.InterceptSpec{Name: name, Namespace: "shop", Workload: workload, Port: port, Mode: managerpb.InterceptMode_GLOBAL}
}

func personal(name, workload string, port uint32, header, value string) *managerpb.InterceptSpec {
	return &managerpb.InterceptSpec{Name: name, Namespace: "shop", Workload: workload, Port: port,
		Mode: managerpb.InterceptMode_PERSONAL, HeaderName: header, HeaderValue: value}
}

// mustAdd adds spec for s and fails the test if the table refuses it.
func mustAdd(t *testing.T, tab *interceptTable, s *session, spec *managerpb.InterceptSpec) *managerpb.Intercept {
	t.Helper()
	ic, err := tab.add(s, spec)
	if err != nil {
		t.Fatalf("add %s for %s: %v", spec.GetName(), s.ident.User, err)
	}
	return ic
}

// refused checks that err wraps want and its message says each of says.
func refused(t *testing.T, what string, err, want error, says ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want %v", what, err, want)
		return
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: error %q does not say %q", what, err, s)
		}
	}
}

func TestInterceptGlobalTakesThePort(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")

	ic := mustAdd(t, tab, ada, global("a", "web", 8080))
	if ic.GetId() == 0 || ic.GetUser() != "ada" || ic.GetHost() != "lovelace" || ic.GetSessionId() != ada.id {
		t.Errorf("intercept %v: want a non-zero id, ada on lovelace and session %s", ic, ada.id)
	}
	if _, err := time.Parse(time.RFC3339, ic.GetCreated()); err != nil {
		t.Errorf("created %q: %v", ic.GetCreated(), err)
	}

	_, err := tab.add(bob, global("b", "web", 8080))
	refused(t, "a second global", err, errInterceptConflict, "ada on lovelace", `"a"`)
	_, err = tab.add(bob, personal("b", "web", 8080, "X-Dev", "bob"))
	refused(t, "a personal next to a global", err, errInterceptConflict, "ada on lovelace")

	// Elsewhere the port is free: another port, another workload, another namespace.
	mustAdd(t, tab, bob, global("b", "web", 9090))
	mustAdd(t, tab, bob, global("c", "api", 8080))
	other := global("a", "web", 8080)
	other.Namespace = "billing"
	mustAdd(t, tab, bob, other)
	if n := len(tab.list(ada, "")); n != 4 {
		t.Errorf("%d intercepts, want 4", n)
	}
}

func TestInterceptPersonalsShareThePort(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob, carol := who("ada", "lovelace"), who("bob", "babbage"), who("carol", "")

	ic := mustAdd(t, tab, ada, personal("a", "web", 8080, "x-dev", "ada"))
	if got := ic.GetSpec().GetHeaderName(); got != "X-Dev" {
		t.Errorf("header name %q, want it canonical: X-Dev", got)
	}
	_, err := tab.add(bob, global("g", "web", 8080))
	refused(t, "a global over a personal", err, errInterceptConflict, "ada on lovelace", `"a"`, "personal")

	mustAdd(t, tab, bob, personal("b", "web", 8080, "X-Dev", "bob"))
	_, err = tab.add(bob, personal("b2", "web", 8080, "X-Tunnel-Other", "ada"))
	refused(t, "another header on a port with personals", err, errInterceptConflict, "on header X-Dev")
	_, err = tab.add(carol, personal("c", "web", 8080, "X-DEV", "ada"))
	refused(t, "the same header and value", err, errInterceptConflict, "X-Dev: ada", "ada on lovelace")

	// A holder without a host is named by user alone.
	mustAdd(t, tab, carol, personal("c", "api", 8080, "X-Dev", "carol"))
	_, err = tab.add(ada, personal("d", "api", 8080, "X-Dev", "carol"))
	refused(t, "carol's header", err, errInterceptConflict, "to carol (intercept")

	// A mirror sits next to personals, but not next to a global.
	mustAdd(t, tab, carol, &managerpb.InterceptSpec{Name: "m", Namespace: "shop", Workload: "web", Port: 8080, Mode: managerpb.InterceptMode_MIRROR})
	mustAdd(t, tab, carol, global("g", "web", 7070))
	_, err = tab.add(ada, &managerpb.InterceptSpec{Name: "m2", Namespace: "shop", Workload: "web", Port: 7070, Mode: managerpb.InterceptMode_MIRROR})
	refused(t, "a mirror next to a global", err, errInterceptConflict, "carol")
}

func TestInterceptSameNameReplacesOrConflicts(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")

	first := mustAdd(t, tab, ada, global("a", "web", 8080))
	second := mustAdd(t, tab, ada, global("a", "web", 8081)) // a re-registration, moved
	if second.GetId() == first.GetId() {
		t.Errorf("the replacement kept id %d", first.GetId())
	}
	if ics := tab.list(ada, "shop"); len(ics) != 1 || ics[0].GetId() != second.GetId() || ics[0].GetSpec().GetPort() != 8081 {
		t.Errorf("after re-adding: %v, want only the new one", ics)
	}
	if _, _, ok := tab.lookup(first.GetId()); ok {
		t.Errorf("the replaced intercept %d is still found", first.GetId())
	}
	if _, owner, ok := tab.lookup(second.GetId()); !ok || owner != ada {
		t.Errorf("lookup(%d) = %v, %v; want ada's session", second.GetId(), owner, ok)
	}

	_, err := tab.add(bob, global("a", "api", 9090))
	refused(t, "another session's name", err, errInterceptConflict, `named "a"`, "ada on lovelace", "--name")
	// The same user from another laptop is refused too; from the same
	// laptop it is a reconnect (TestReconnectTakesOverTheStaleIntercept).
	_, err = tab.add(who("ada", "babbage"), global("a", "web", 8081))
	refused(t, "the same name from another laptop of the same user", err, errInterceptConflict)
}

func TestInterceptNeedsAVerifiedUser(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	s := who("", "lovelace")
	s.why = "proof tunnel-session-x is 5m0s old"
	_, err := tab.add(s, global("a", "web", 8080))
	refused(t, "unverified", err, errInterceptNotVerified, "proof tunnel-session-x is 5m0s old")
	_, err = tab.add(who("", ""), global("a", "web", 8080))
	refused(t, "no hello", err, errInterceptNotVerified, "has not said hello")
	if n := len(tab.list(nil, "")); n != 0 {
		t.Errorf("%d intercepts after refusals", n)
	}
	// An invalid spec is refused as such, before the user is looked at.
	_, err = tab.add(who("", ""), global("", "web", 8080))
	refused(t, "invalid and unverified", err, errInterceptInvalid)
}

func TestInterceptRemove(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")
	mustAdd(t, tab, ada, global("a", "web", 8080))
	mustAdd(t, tab, ada, global("b", "web", 8081))

	refused(t, "bob removes ada's", tab.remove(bob, "shop", "a"), errInterceptNotYours, `"a"`, "ada on lovelace")
	refused(t, "no session removes ada's", tab.remove(nil, "shop", "a"), errInterceptNotYours)
	refused(t, "an unverified session removes ada's", tab.remove(who("", "lovelace"), "shop", "a"), errInterceptNotYours)
	refused(t, "another namespace", tab.remove(ada, "billing", "a"), errInterceptNotFound, "billing")

	_, ch := tab.workload("shop", "web")
	if err := tab.remove(ada, "shop", "a"); err != nil {
		t.Fatalf("ada removes her own: %v", err)
	}
	waitClosed(t, ch, "the change channel after remove")
	// A later session of ada's (the laptop reconnected) removes the rest.
	if err := tab.remove(who("ada", "other-laptop"), "shop", "b"); err != nil {
		t.Fatalf("ada's other session removes hers: %v", err)
	}
	refused(t, "removed twice", tab.remove(ada, "shop", "a"), errInterceptNotFound, `"a"`)
	if n := len(tab.list(ada, "")); n != 0 {
		t.Errorf("%d intercepts left", n)
	}
}

// The owner's list hides the direct key too: the CLI prints list's answer.
func TestInterceptListHidesOthersHeaderValues(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")
	mustAdd(t, tab, bob, personal("zeta", "web", 8080, "X-Dev", "bob-secret"))
	mustAdd(t, tab, ada, personal("alpha", "web", 8080, "X-Dev", "ada-secret"))
	if mid := mustAdd(t, tab, bob, global("mid", "api", 8080)); len(mid.GetDirectKey()) != rpc.DirectKeyLen {
		t.Errorf("add gave its laptop a direct key of %d bytes, want %d", len(mid.GetDirectKey()), rpc.DirectKeyLen)
	}
	other := global("first", "web", 8080)
	other.Namespace = "billing"
	mustAdd(t, tab, bob, other)

	values := func(ics []*managerpb.Intercept) string {
		var b []string
		for _, ic := range ics {
			b = append(b, fmt.Sprintf("%s/%s=%s", ic.GetSpec().GetNamespace(), ic.GetSpec().GetName(), ic.GetSpec().GetHeaderValue()))
		}
		return strings.Join(b, " ")
	}
	for _, tc := range []struct {
		name   string
		caller *session
		ns     string
		want   string
	}{
		{"ada", ada, "", "billing/first= shop/alpha=ada-secret shop/mid= shop/zeta=(hidden)"},
		{"bob", bob, "shop", "shop/alpha=(hidden) shop/mid= shop/zeta=bob-secret"},
		{"ada elsewhere", who("ada", "other-laptop"), "shop", "shop/alpha=ada-secret shop/mid= shop/zeta=(hidden)"},
		{"no session", nil, "shop", "shop/alpha=(hidden) shop/mid= shop/zeta=(hidden)"},
		{"ada", ada, "nowhere", ""},
	} {
		if got := values(tab.list(tc.caller, tc.ns)); got != tc.want {
			t.Errorf("list(%s, %q) = %s\nwant %s", tc.name, tc.ns, got, tc.want)
		}
	}
	// The sidecar's view keeps every value; and nothing list returned was the table's own.
	ics, _ := tab.workload("shop", "web")
	if got := values(ics); got != "shop/zeta=bob-secret shop/alpha=ada-secret" {
		t.Errorf("workload view %s, want both values in id order", got)
	}
	for _, ic := range ics {
		if len(ic.GetDirectKey()) != rpc.DirectKeyLen {
			t.Errorf("the sidecar's view of %s has a direct key of %d bytes, want %d", ic.GetSpec().GetName(), len(ic.GetDirectKey()), rpc.DirectKeyLen)
		}
	}
	if ics[0].GetDirectKey() == nil || string(ics[0].GetDirectKey()) == string(ics[1].GetDirectKey()) {
		t.Errorf("two intercepts share a direct key")
	}
	for _, ic := range append(tab.list(ada, ""), tab.list(bob, "")...) {
		if ic.GetDirectKey() != nil {
			t.Errorf("list shows %s's direct key; only its laptop and the sidecars may have it", ic.GetSpec().GetName())
		}
	}
	tab.list(ada, "")[0].Spec.Name = "changed"
	if got := values(tab.list(ada, "billing")); got != "billing/first=" {
		t.Errorf("editing list's answer changed the table: %s", got)
	}
}

func TestInterceptDropSession(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")
	a1 := mustAdd(t, tab, ada, global("a1", "web", 8080))
	mustAdd(t, tab, ada, personal("a2", "web", 9090, "X-Dev", "ada"))
	b1 := mustAdd(t, tab, bob, personal("b1", "web", 9090, "X-Dev", "bob"))
	mustAdd(t, tab, bob, global("b2", "api", 8080))

	ics, ch := tab.workload("shop", "web")
	if len(ics) != 3 || ics[0].GetId() != a1.GetId() || ics[2].GetId() != b1.GetId() {
		t.Fatalf("workload shop/web = %v, want a1, a2, b1 in id order", ics)
	}
	select {
	case <-ch:
		t.Fatal("the change channel is closed before any change")
	default:
	}
	if n := tab.dropSession(ada); n != 2 {
		t.Errorf("dropSession(ada) = %d, want 2", n)
	}
	waitClosed(t, ch, "the change channel after dropSession")
	ics, ch = tab.workload("shop", "web")
	if len(ics) != 1 || ics[0].GetId() != b1.GetId() {
		t.Errorf("after ada left: %v, want only b1", ics)
	}
	if _, _, ok := tab.lookup(a1.GetId()); ok {
		t.Error("ada's intercept is still found")
	}
	if n := tab.dropSession(ada); n != 0 {
		t.Errorf("dropSession(ada) again = %d", n)
	}
	select {
	case <-ch:
		t.Error("a dropSession that removed nothing announced a change")
	default:
	}
	// Ada's port is free again for bob.
	mustAdd(t, tab, bob, global("b3", "web", 8080))
	waitClosed(t, ch, "the change channel after add")
}

func TestInterceptValidate(t *testing.T) {
	ok := func() *managerpb.InterceptSpec { return personal("a", "web", 8080, "x-dev", "ada") }
	for name, mod := range map[string]func(*managerpb.InterceptSpec){
		"no name":              func(s *managerpb.InterceptSpec) { s.Name = "" },
		"no namespace":         func(s *managerpb.InterceptSpec) { s.Namespace = "" },
		"no workload":          func(s *managerpb.InterceptSpec) { s.Workload = "" },
		"port 0":               func(s *managerpb.InterceptSpec) { s.Port = 0 },
		"port 65536":           func(s *managerpb.InterceptSpec) { s.Port = 65536 },
		"mode unspecified":     func(s *managerpb.InterceptSpec) { s.Mode = managerpb.InterceptMode_INTERCEPT_MODE_UNSPECIFIED },
		"unknown mode":         func(s *managerpb.InterceptSpec) { s.Mode = 42 },
		"personal, no header":  func(s *managerpb.InterceptSpec) { s.HeaderName = "" },
		"personal, no value":   func(s *managerpb.InterceptSpec) { s.HeaderValue = "" },
		"personal, neither of": func(s *managerpb.InterceptSpec) { s.HeaderName, s.HeaderValue = "", "" },
	} {
		s := ok()
		mod(s)
		if err := validate(s, testHeaders); !errors.Is(err, errInterceptInvalid) {
			t.Errorf("%s: validate = %v, want errInterceptInvalid", name, err)
		}
		if _, err := newInterceptTable(testHeaders).add(who("ada", "lovelace"), s); !errors.Is(err, errInterceptInvalid) {
			t.Errorf("%s: add = %v, want errInterceptInvalid", name, err)
		}
	}
	s := ok()
	if err := validate(s, testHeaders); err != nil || s.GetHeaderName() != "X-Dev" {
		t.Errorf("validate(valid) = %v, header %q; want nil, X-Dev", err, s.GetHeaderName())
	}
	for _, mode := range []managerpb.InterceptMode{managerpb.InterceptMode_GLOBAL, managerpb.InterceptMode_MIRROR} {
		s := global("a", "web", 65535)
		s.Mode = mode
		if err := validate(s, testHeaders); err != nil {
			t.Errorf("validate(%v) = %v", mode, err)
		}
	}
}

func TestInterceptGRPCCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{errInterceptConflict, codes.AlreadyExists},
		{errInterceptNotFound, codes.NotFound},
		{errInterceptNotYours, codes.PermissionDenied},
		{errInterceptNotVerified, codes.Unauthenticated},
		{errInterceptInvalid, codes.InvalidArgument},
	} {
		err := grpcError(fmt.Errorf("%w: detail", tc.err))
		if got := status.Code(err); got != tc.want {
			t.Errorf("grpcError(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if !strings.Contains(status.Convert(err).Message(), "detail") {
			t.Errorf("grpcError(%v) lost the message: %v", tc.err, err)
		}
	}
}

// waitClosed fails the test unless ch is closed within 5 s.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestHeaderAllowed(t *testing.T) {
	allowed := []string{"x-tunnel-*", "Baggage"}
	for name, want := range map[string]bool{
		"X-Tunnel-Dev": true, "x-tunnel-intercept": true, "baggage": true,
		"x-tunnel-": false, "User-Agent": false, "Cookie": false, "Authorization": false, "x-tunnelx": false,
	} {
		if got := headerAllowed(name, allowed); got != want {
			t.Errorf("headerAllowed(%q) = %v, want %v", name, got, want)
		}
	}
}

// A personal intercept cannot match on a header outside the allowed set
// (User-Agent would take most of a teammate's traffic), and two on one
// port must share their header name.
func TestPersonalInterceptHeaders(t *testing.T) {
	tab := newInterceptTable(nil) // the default: x-tunnel-*
	ada, bob := who("ada", "lovelace"), who("bob", "babbage")
	_, err := tab.add(bob, personal("b", "web", 8080, "User-Agent", "curl/8.5.0"))
	refused(t, "a header outside the allowed set", err, errInterceptInvalid, "x-tunnel-*", "User-Agent", "--allow-header")
	mustAdd(t, tab, ada, personal("a", "web", 8080, "x-tunnel-dev", "ada"))
	_, err = tab.add(bob, personal("b", "web", 8080, "x-tunnel-user", "bob"))
	refused(t, "another header on the same port", err, errInterceptConflict, "X-Tunnel-Dev", "ada on lovelace")
	mustAdd(t, tab, bob, personal("b", "web", 8080, "x-tunnel-dev", "bob"))
	mustAdd(t, tab, bob, personal("c", "web", 9090, "x-tunnel-user", "bob"))
}

// A laptop that reconnects before the manager dropped its old session
// keeps its intercepts: the same user from the same host takes them over;
// anyone else is still refused.
func TestReconnectTakesOverTheStaleIntercept(t *testing.T) {
	tab := newInterceptTable(testHeaders)
	old, fresh := who("ada", "lovelace"), who("ada", "lovelace")
	other := who("ada", "another-laptop")
	stale := mustAdd(t, tab, old, personal("a", "web", 8080, "x-dev", "ada"))
	if _, err := tab.add(other, personal("a", "web", 8080, "x-dev", "ada")); !errors.Is(err, errInterceptConflict) {
		t.Errorf("the same user from another host: %v, want a conflict", err)
	}
	again := mustAdd(t, tab, fresh, personal("a", "web", 8080, "x-dev", "ada"))
	if again.GetId() == stale.GetId() || len(tab.list(fresh, "shop")) != 1 {
		t.Errorf("after the takeover: %v", tab.list(fresh, "shop"))
	}
	if n := tab.dropSession(old); n != 0 {
		t.Errorf("the old session's end took %d intercepts with it, want none: they are the new session's", n)
	}
	if ics, _ := tab.workload("shop", "web"); len(ics) != 1 {
		t.Errorf("the sidecar sees %d intercepts, want the one", len(ics))
	}
}
