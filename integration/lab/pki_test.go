//go:build linux

package lab

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func TestPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	cfg := Config{ServiceCIDR: "10.113.0.0/20", ClusterDomain: "tunnel.test"}.Defaults()
	pk, err := ensurePKI(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(pk.ca)

	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, host := range []string{"10.209.0.1", "10.113.0.1", "127.0.0.1", "kubernetes.default.svc.tunnel.test"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("API server certificate does not serve %s: %v", host, err)
		}
	}

	for _, id := range nodeIdentities() {
		b, err := os.ReadFile(filepath.Join(dir, id.file+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		c := mustParseCert(t, b)
		if c.Subject.CommonName != id.user || !slices.Equal(c.Subject.Organization, id.groups) {
			t.Errorf("%s: subject %v, want user %s groups %v", id.file, c.Subject, id.user, id.groups)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", id.file, err)
		}
	}

	// A second call keeps the CA: certificates already handed out stay valid.
	again, err := ensurePKI(dir, cfg)
	if err != nil || !again.ca.Equal(pk.ca) {
		t.Fatalf("second ensurePKI replaced the CA (%v)", err)
	}

	kc := filepath.Join(t.TempDir(), "dev.conf")
	if err := pk.writeKubeconfig(kc, "dev", "dev"); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://10.209.0.1:6443" || len(rc.CertData) == 0 || len(rc.CAData) == 0 {
		t.Errorf("kubeconfig: host %s, %d bytes of cert, %d of CA", rc.Host, len(rc.CertData), len(rc.CAData))
	}
}

func mustParseCert(t *testing.T, pemData []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemData)
	if block == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
