//go:build linux

package lab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/crypto/bcrypt"
)

// The lab's registry: Debian's docker-registry (distribution 2.8), unpacked
// into the cache and run on the node's loopback, behind a front of the
// lab's own (integration/registryauth) that serves TLS from the lab CA on
// the node's address and tokens as public registries do: anonymous pulls
// of public repositories, a password for repositories under private/,
// pushes for the pusher only. Nodes trust it through containerd's
// hosts.toml; laptops and the host reach it as they reach the API server.
const (
	registryPort     = 5000
	registryBackPort = 5002 // the registry itself, on the node's loopback
	registryService  = "tunnel-lab-registry"
	registryIssuer   = "tunnel-lab"
	// RegistryPusher may push and pull everything; RegistryPuller may pull
	// everything, private repositories too (what a pull secret carries).
	RegistryPusher = "lab-push"
	RegistryPuller = "lab-pull"
	// PrivatePrefix is the repositories that need a password to pull.
	PrivatePrefix = "private/"
)

// RegistryHost is the registry's host:port, as image names start.
func RegistryHost() string { return labRegistry }

// AgentRegistry is the registry prefix the lab pushes tunnel's agent image
// under, as `make image REGISTRY=...` would: RegistryHost()/tunnel.
func AgentRegistry() string { return RegistryHost() + "/tunnel" }

func (p Paths) registryBinary() string {
	return filepath.Join(p.Cache, "docker-registry", "usr/bin/docker-registry")
}

// registryFile is a file of the registry's state: its storage, htpasswd,
// the users' passwords and the docker config that pushes with them.
func (p Paths) registryFile(name ...string) string {
	return p.state(append([]string{"registry"}, name...)...)
}

// RegistryDockerConfig is a folder with a config.json holding the
// pusher's credentials: DOCKER_CONFIG for `make image` and any client
// that reads the usual credential chain.
func (p Paths) RegistryDockerConfig() string { return p.registryFile("docker") }

func ensureRegistryPackage(ctx context.Context, p Paths, pr *progress) error {
	return ensureUnpacked(ctx, p, pr, "docker-registry", "usr/bin/docker-registry")
}

// registryUsers are the users' passwords, made once per lab.
type registryUsers map[string]string

// ensureRegistryUsers makes the users' passwords, the htpasswd the token
// server checks them against, and the pusher's docker config, once.
func ensureRegistryUsers(p Paths) (registryUsers, error) {
	path := p.registryFile("users.json")
	var users registryUsers
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &users) == nil && len(users) == 2 {
		return users, nil
	}
	users = registryUsers{}
	var htpasswd []byte
	for _, u := range []string{RegistryPusher, RegistryPuller} {
		pw := make([]byte, 12)
		if _, err := rand.Read(pw); err != nil {
			return nil, err
		}
		users[u] = hex.EncodeToString(pw)
		hash, err := bcrypt.GenerateFromPassword([]byte(users[u]), bcrypt.DefaultCost)
		if err != nil {
			return nil, err
		}
		htpasswd = fmt.Appendf(htpasswd, "%s:%s\n", u, hash)
	}
	if err := os.MkdirAll(p.registryFile("data"), 0o700); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(p.registryFile("htpasswd"), htpasswd, 0o600); err != nil {
		return nil, err
	}
	docker, err := DockerConfig(RegistryPusher, users[RegistryPusher])
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(p.RegistryDockerConfig(), "config.json"), docker, 0o600); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(users)
	return users, writeFileAtomic(path, b, 0o600)
}

// DockerConfig is a docker config.json (and a kubernetes.io/dockerconfigjson
// Secret's data) that logs user in to the lab's registry.
func DockerConfig(user, password string) ([]byte, error) {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	return json.Marshal(map[string]any{"auths": map[string]any{
		RegistryHost(): map[string]string{"username": user, "password": password, "auth": auth},
	}})
}

// RegistryPassword is a registry user's password.
func (l *Lab) RegistryPassword(user string) (string, error) {
	users, err := ensureRegistryUsers(l.Paths)
	if err != nil {
		return "", err
	}
	pw, ok := users[user]
	if !ok {
		return "", fmt.Errorf("the lab's registry has no user %s", user)
	}
	return pw, nil
}

// registryComponents are the registry and its front, in the order they
// start.
func registryComponents(p Paths) []component {
	back := fmt.Sprintf("127.0.0.1:%d", registryBackPort)
	return []component{
		{
			name: "registry", bin: p.registryBinary(), inNode: true,
			args:  []string{"serve", p.state("registry", "config.yml")},
			ready: anyHTTPProbe("http://" + back + "/v2/"),
		},
		{
			name: "registry-front", bin: p.state("bin", "registryauth"), inNode: true,
			args: []string{
				"--listen", RegistryHost(), "--registry", "http://" + back,
				"--tls-cert", p.pki("registry.crt"), "--tls-key", p.pki("registry.key"),
				"--sign-cert", p.pki("registry-token.crt"), "--sign-key", p.pki("registry-token.key"),
				"--htpasswd", p.registryFile("htpasswd"), "--pushers", RegistryPusher,
				"--issuer", registryIssuer, "--service", registryService, "--private-prefix", PrivatePrefix,
			},
			ready: anyHTTPProbe("https://" + RegistryHost() + "/v2/"),
		},
	}
}

// anyHTTPProbe is ready once url answers at all (the registry's /v2/ asks
// for a token).
func anyHTTPProbe(url string) func(context.Context) error {
	return probe("curl", "-sk", "-o", "/dev/null", "--max-time", "2", url)
}

// prepareRegistry readies what the registry's processes need before they
// start: the package, the token server's binary, users and certificates.
func prepareRegistry(ctx context.Context, p Paths, pk *pki) error {
	if err := BuildBinary(ctx, "./integration/registryauth", p.state("bin", "registryauth")); err != nil {
		return err
	}

	if _, err := ensureRegistryUsers(p); err != nil {
		return fmt.Errorf("make the registry's users: %w", err)
	}
	changed, err := pk.ensureRegistryCerts()
	if err != nil {
		return err
	}
	if changed {
		for _, c := range registryComponents(p) {
			if err := stop(p, c, 10*time.Second); err != nil {
				return err
			}
		}
	}
	// The machine's CAs and the lab's: SSL_CERT_FILE for clients on the
	// host (make image) that must still reach the module proxy.
	system, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	return writeFileAtomic(p.RegistryCABundle(), append(append(system, '\n'), pk.caPEM...), 0o644)
}

// RegistryCABundle is the machine's CA bundle plus the lab CA.
func (p Paths) RegistryCABundle() string { return p.registryFile("ca-bundle.pem") }

// RegistryTransport trusts the lab CA, for clients in this process.
func RegistryTransport(p Paths) (http.RoundTripper, error) {
	ca, err := os.ReadFile(p.pki("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.ResponseHeaderTimeout = 30 * time.Second
	return t, nil
}

// pusher is the keychain that logs the lab's pushes in.
func (p Paths) pusher() (authn.Keychain, error) {
	users, err := ensureRegistryUsers(p)
	if err != nil {
		return nil, err
	}
	return staticKeychain{authn.FromConfig(authn.AuthConfig{Username: RegistryPusher, Password: users[RegistryPusher]})}, nil
}

type staticKeychain struct{ authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return k.Authenticator, nil
}
