// Command registryauth is the lab registry's front door: it serves TLS on
// the registry's address, answers /token with the Docker registry token
// protocol as a company registry or a public one does, and passes
// everything else to the registry behind it on loopback. Tokens are served
// on the registry's own host and port, where clients accept a realm on a
// private address (go-containerregistry refuses one elsewhere). Anyone may
// pull a public repository; a repository under a private prefix needs a
// user's password (a pull secret); only pushers may push. Passwords are
// checked against an htpasswd file (bcrypt). The registry trusts the tokens
// through the lab CA, which signed the certificate in each token's x5c
// header.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	var (
		listen, upstream, cert, key, signCert, signKey, htpasswd, issuer, service, private, pushers string
	)
	flag.StringVar(&listen, "listen", "127.0.0.1:5000", "address to serve HTTPS on")
	flag.StringVar(&upstream, "registry", "http://127.0.0.1:5002", "the registry behind")
	flag.StringVar(&cert, "tls-cert", "", "serving certificate")
	flag.StringVar(&key, "tls-key", "", "serving key")
	flag.StringVar(&signCert, "sign-cert", "", "the certificate tokens carry (x5c), signed by a CA the registry trusts")
	flag.StringVar(&signKey, "sign-key", "", "the key tokens are signed with (ECDSA P-256)")
	flag.StringVar(&htpasswd, "htpasswd", "", "users and bcrypt passwords")
	flag.StringVar(&issuer, "issuer", "tunnel-lab", "the tokens' issuer, as the registry expects")
	flag.StringVar(&service, "service", "tunnel-lab-registry", "the registry's service name (the tokens' audience)")
	flag.StringVar(&private, "private-prefix", "private/", "repositories under this prefix need a password to pull")
	flag.StringVar(&pushers, "pushers", "", "users who may push (comma-separated)")
	flag.Parse()
	s, err := newServer(signCert, signKey, htpasswd, issuer, service, private, strings.Split(pushers, ","))
	if err != nil {
		log.Fatal(err)
	}
	up, err := url.Parse(upstream)
	if err != nil {
		log.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(up)
	mux := http.NewServeMux()
	mux.Handle("/token", s)
	mux.Handle("/", proxy)
	// Blobs are large: only the request header is bounded in time.
	srv := &http.Server{
		Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12},
	}
	log.Printf("registry front on %s, tokens on /token, the registry at %s", listen, upstream)
	log.Fatal(srv.ListenAndServeTLS(cert, key))
}

type server struct {
	key             *ecdsa.PrivateKey
	x5c             []string
	users           map[string][]byte // user: bcrypt hash
	dummy           []byte            // a hash no password matches
	issuer, service string
	private         string
	pushers         []string
}

func newServer(certFile, keyFile, htpasswd, issuer, service, private string, pushers []string) (*server, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load the signing pair: %w", err)
	}
	s := &server{issuer: issuer, service: service, private: private, pushers: pushers, users: map[string][]byte{}}
	if s.dummy, err = bcrypt.GenerateFromPassword([]byte(hex.EncodeToString(make([]byte, 16))+"x"), bcrypt.DefaultCost); err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("the signing key must be ECDSA P-256 (ES256)")
	}
	s.key = key
	for _, der := range pair.Certificate {
		s.x5c = append(s.x5c, base64.StdEncoding.EncodeToString(der))
	}
	f, err := os.Open(htpasswd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if user, hash, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			s.users[user] = []byte(hash)
		}
	}
	return s, sc.Err()
}

// ServeHTTP answers GET /token?service=S&scope=repository:NAME:ACTIONS...
// with a token granting what the caller may of what it asked.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	user := ""
	if u, pw, ok := r.BasicAuth(); ok {
		hash, known := s.users[u]
		if !known {
			hash = s.dummy // the same work for an unknown user: no timing to tell names by
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(pw)) != nil || !known {
			w.Header().Set("WWW-Authenticate", `Basic realm="tunnel-lab"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}`, http.StatusUnauthorized)
			return
		}
		user = u
	}
	if svc := r.URL.Query().Get("service"); svc != "" && svc != s.service {
		http.Error(w, "unknown service", http.StatusBadRequest)
		return
	}
	var access []accessEntry
	for _, scope := range r.URL.Query()["scope"] {
		if a, ok := s.grant(user, scope); ok {
			access = append(access, a)
		}
	}
	tok, err := s.sign(user, access)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": 300, "issued_at": time.Now().UTC().Format(time.RFC3339),
	})
}

type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// grant is what user ("" when anonymous) may do of one scope: pull a public
// repository, pull anything once known, push when a pusher. Nothing else
// (no catalog, no delete).
func (s *server) grant(user, scope string) (accessEntry, bool) {
	parts := strings.Split(scope, ":")
	if len(parts) < 3 || parts[0] != "repository" {
		return accessEntry{}, false
	}
	name, actions := strings.Join(parts[1:len(parts)-1], ":"), strings.Split(parts[len(parts)-1], ",")
	a := accessEntry{Type: "repository", Name: name}
	for _, act := range actions {
		switch {
		case act == "pull" && (user != "" || !strings.HasPrefix(name, s.private)):
			a.Actions = append(a.Actions, "pull")
		case act == "push" && user != "" && slices.Contains(s.pushers, user):
			a.Actions = append(a.Actions, "push")
		}
	}
	return a, len(a.Actions) > 0
}

// sign makes an ES256 JWT as distribution verifies it: the audience a
// plain string, the signature R||S, the signing certificate in x5c.
func (s *server) sign(user string, access []accessEntry) (string, error) {
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	now := time.Now().Unix()
	if access == nil {
		access = []accessEntry{}
	}
	header, err := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": s.x5c})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"iss": s.issuer, "sub": user, "aud": s.service, "iat": now, "nbf": now - 10, "exp": now + 300,
		"jti": hex.EncodeToString(id), "access": access,
	})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signed))
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	return signed + "." + enc.EncodeToString(sig), nil
}
