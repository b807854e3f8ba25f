//go:build linux

package lab

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// identity is a client certificate the lab issues: Kubernetes takes the user
// from the common name and the groups from the organizations.
type identity struct {
	file   string // base name of .crt/.key in the pki folder
	user   string
	groups []string
}

func nodeIdentities() []identity {
	return []identity{
		{"admin", "admin", []string{"system:masters"}},
		{"dev", "dev", nil},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}},
		{"controller-manager", "system:kube-controller-manager", nil},
		{"scheduler", "system:kube-scheduler", nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}},
		{"kube-proxy", "system:kube-proxy", nil},
	}
}

// pki issues the cluster's certificates into dir once; a lab that is up
// keeps its certificates for as long as it lives.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte
	server string // API server URL the kubeconfigs name
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func ensurePKI(dir string, cfg Config) (*pki, error) {
	p := &pki{dir: dir, server: fmt.Sprintf("https://%s:6443", nodeAddr)}
	if err := p.loadCA(); errors.Is(err, os.ErrNotExist) {
		if err := p.issueAll(cfg); err != nil {
			os.RemoveAll(dir) // never leave half a PKI for the next up to trust
			return nil, fmt.Errorf("issue lab certificates: %w", err)
		}
	} else if err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) loadCA() error {
	caPEM, err := os.ReadFile(p.path("ca.crt"))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(p.path("ca.key"))
	if err != nil {
		return err
	}
	cb, _ := pem.Decode(caPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return fmt.Errorf("lab CA in %s is damaged: run lab down, then lab up", p.dir)
	}
	if p.ca, err = x509.ParseCertificate(cb.Bytes); err != nil {
		return err
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return err
	}
	p.caKey = key.(crypto.Signer)
	p.caPEM = caPEM
	return nil
}

func (p *pki) issueAll(cfg Config) error {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "tunnel-lab-ca"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := p.sign(tmpl, key.Public(), tmpl, key)
	if err != nil {
		return err
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	p.caKey = key
	p.caPEM = pemBlock("CERTIFICATE", der)
	if err := p.writePair("ca", der, key); err != nil {
		return err
	}

	domain := cfg.ClusterDomain
	if err := p.issue("apiserver", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + domain, "localhost", nodeName},
		IPAddresses: []net.IP{nodeAddr.AsSlice(), cfg.kubernetesServiceIP().AsSlice(),
			hostLinkNode.AsSlice(), net.IPv4(127, 0, 0, 1)},
	}); err != nil {
		return err
	}
	for _, id := range nodeIdentities() {
		if err := p.issue(id.file, &x509.Certificate{
			Subject:     pkix.Name{CommonName: id.user, Organization: id.groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			return err
		}
	}
	// Service account tokens are signed with an RSA key: every client verifies RS256.
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.path("sa.pub"), pemBlock("PUBLIC KEY", pub), 0o644); err != nil {
		return err
	}
	return writeKey(p.path("sa.key"), sa)
}

func (p *pki) issue(name string, tmpl *x509.Certificate) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := p.sign(tmpl, key.Public(), p.ca, p.caKey)
	if err != nil {
		return fmt.Errorf("sign %s certificate: %w", name, err)
	}
	return p.writePair(name, der, key)
}

func (p *pki) sign(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().AddDate(5, 0, 0)
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
}

func (p *pki) writePair(name string, der []byte, key crypto.Signer) error {
	if err := os.WriteFile(p.path(name+".crt"), pemBlock("CERTIFICATE", der), 0o644); err != nil {
		return err
	}
	return writeKey(p.path(name+".key"), key)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pemBlock("PRIVATE KEY", der), 0o600)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeKubeconfig writes a self-contained kubeconfig (certificates inline)
// for an identity, so it works from the host, the node and any laptop.
func (p *pki) writeKubeconfig(path, file, user string) error {
	crt, err := os.ReadFile(p.path(file + ".crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(p.path(file + ".key"))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: p.server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "lab"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data, 0o644)
}

// ensureRegistryCerts issues the registry's serving certificate and the
// token server's signing certificate, once: a lab brought up before the
// registry existed gets them on its next up. changed says the signing one
// is new, so a front that runs must start again with it.
func (p *pki) ensureRegistryCerts() (changed bool, err error) {
	if _, err := os.Stat(p.path("registry.crt")); err != nil {
		if err := p.issue("registry", &x509.Certificate{
			Subject:     pkix.Name{CommonName: "tunnel-lab-registry"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IPAddresses: []net.IP{nodeAddr.AsSlice(), hostLinkNode.AsSlice(), net.IPv4(127, 0, 0, 1)},
		}); err != nil {
			return false, err
		}
	}
	// The token signer is its own root, and the registry trusts only it:
	// a certificate the lab CA signed for anything else (the API server's,
	// a kubelet's) must not mint push tokens.
	if selfSigned(p.path("registry-token.crt")) {
		return false, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "tunnel-lab-registry-token"},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := p.sign(tmpl, key.Public(), tmpl, key)
	if err != nil {
		return false, err
	}
	return true, p.writePair("registry-token", der, key)
}

// selfSigned says whether the certificate at path is there and its own issuer.
func selfSigned(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return false
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	return err == nil && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}
