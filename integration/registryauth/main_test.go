package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func testServer(t *testing.T) *server {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hash := func(pw string) []byte {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	return &server{key: key, x5c: []string{"cert"}, issuer: "lab", service: "reg", private: "private/", dummy: hash("nobody's"),
		pushers: []string{"pusher"}, users: map[string][]byte{"pusher": hash("push-pw"), "puller": hash("pull-pw")}}
}

// token asks for scopes as user (anonymous when ""), and returns the
// status and the access the token grants.
func token(t *testing.T, s *server, user, pw string, scopes ...string) (int, []accessEntry) {
	t.Helper()
	q := "service=reg"
	for _, sc := range scopes {
		q += "&scope=" + sc
	}
	req := httptest.NewRequest(http.MethodGet, "/token?"+q, nil)
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return rec.Code, nil
	}
	var body struct{ Token string }
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(body.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q", body.Token)
	}
	// The signature verifies with the server's key, R||S as JWS has it.
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if len(sig) != 64 || !ecdsa.Verify(&s.key.PublicKey, digest[:], r, ss) {
		t.Fatal("the token's signature does not verify")
	}
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Aud    string
		Access []accessEntry
	}
	if err := json.Unmarshal(claims, &c); err != nil || c.Aud != "reg" {
		t.Fatalf("claims %s: %v", claims, err)
	}
	return rec.Code, c.Access
}

func actions(access []accessEntry) string {
	var out []string
	for _, a := range access {
		out = append(out, a.Name+":"+strings.Join(a.Actions, ","))
	}
	return strings.Join(out, " ")
}

func TestTokensGrantOnlyWhatTheCallerMay(t *testing.T) {
	s := testServer(t)
	for _, tt := range []struct {
		name, user, pw, scope string
		code                  int
		want                  string
	}{
		{"anyone pulls a public repository", "", "", "repository:lab/echo:pull", 200, "lab/echo:pull"},
		{"nobody pushes anonymously", "", "", "repository:lab/echo:pull,push", 200, "lab/echo:pull"},
		{"nobody pulls a private repository anonymously", "", "", "repository:private/echo:pull", 200, ""},
		{"a puller pulls a private repository", "puller", "pull-pw", "repository:private/echo:pull", 200, "private/echo:pull"},
		{"a puller does not push", "puller", "pull-pw", "repository:lab/echo:push,pull", 200, "lab/echo:pull"},
		{"the pusher pushes", "pusher", "push-pw", "repository:lab/echo:pull,push", 200, "lab/echo:pull,push"},
		{"a wrong password is refused", "pusher", "guess", "repository:lab/echo:push", 401, ""},
		{"an unknown user is refused", "eve", "push-pw", "repository:lab/echo:pull", 401, ""},
		{"no catalog, even for the pusher", "pusher", "push-pw", "registry:catalog:*", 200, ""},
		{"no delete", "pusher", "push-pw", "repository:lab/echo:delete", 200, ""},
	} {
		code, access := token(t, s, tt.user, tt.pw, tt.scope)
		if code != tt.code || actions(access) != tt.want {
			t.Errorf("%s: %d %q, want %d %q", tt.name, code, actions(access), tt.code, tt.want)
		}
	}
}

// FuzzGrant: whatever scope a client sends, an anonymous caller gets no
// push and nothing of a private repository, a puller no push, and only
// repository scopes are granted.
func FuzzGrant(f *testing.F) {
	for _, s := range []string{"repository:lab/echo:pull", "repository:private/x:pull,push", "registry:catalog:*",
		"repository:a:b:c:push", "repository::pull", "repository:private/:push,pull,delete", ":::", ""} {
		f.Add(s)
	}
	s := &server{private: "private/", pushers: []string{"pusher"}}
	f.Fuzz(func(t *testing.T, scope string) {
		for _, user := range []string{"", "puller", "pusher"} {
			a, ok := s.grant(user, scope)
			if !ok {
				continue
			}
			if a.Type != "repository" || len(a.Actions) == 0 {
				t.Fatalf("grant(%q, %q) = %+v", user, scope, a)
			}
			for _, act := range a.Actions {
				switch {
				case act != "pull" && act != "push":
					t.Fatalf("grant(%q, %q) gave %q", user, scope, act)
				case act == "push" && user != "pusher":
					t.Fatalf("%q may push by scope %q", user, scope)
				case user == "" && strings.HasPrefix(a.Name, "private/"):
					t.Fatalf("anonymous got %q of private %q", act, a.Name)
				}
			}
		}
	})
}
