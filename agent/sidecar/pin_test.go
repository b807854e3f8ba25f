package sidecar

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"tunnel.dev/tunnel/rpc"
)

// tlsServer answers TLS with a fresh self-signed key and returns its
// address and the key's pin.
func tlsServer(t *testing.T) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tunnel-manager"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); time.Sleep(time.Second); c.Close() }()
		}
	}()
	return ln.Addr().String(), rpc.KeyPin(cert)
}

// A sidecar talks only to the manager whose key it was injected with:
// whoever else answers the manager's address gets no session.
func TestSidecarPinsTheManagersKey(t *testing.T) {
	addr, pin := tlsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialManager(pin)(ctx, addr)
	if err != nil {
		t.Fatalf("the manager with its pinned key: %v", err)
	}
	c.Close()
	impostor, _ := tlsServer(t)
	if c, err := dialManager(pin)(ctx, impostor); err == nil || !strings.Contains(err.Error(), "not the manager's") {
		if c != nil {
			c.Close()
		}
		t.Errorf("another server at the manager's address: %v, want refused", err)
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	go func() {
		c, err := plain.Accept()
		if err == nil {
			_, _ = c.Write([]byte("not TLS at all\n"))
			c.Close()
		}
	}()
	if c, err := dialManager(pin)(ctx, plain.Addr().String()); err == nil {
		c.Close()
		t.Error("a plain TCP server at the manager's address was accepted")
	}
}
