package rpc

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// wireTap keeps what one side wrote, to show the key never crossed.
type wireTap struct {
	net.Conn
	wrote bytes.Buffer
}

func (r *wireTap) Write(p []byte) (int, error) {
	r.wrote.Write(p)
	return r.Conn.Write(p)
}

var directKey = bytes.Repeat([]byte{7}, DirectKeyLen)

// sidecar answers one handshake on c as pod holding key, with its last
// Status, and returns AnswerDirect's error.
func sidecar(c net.Conn, key []byte, pod string) error {
	h, err := ReadDirectHello(c)
	if err != nil {
		return err
	}
	err = AnswerDirect(c, key, pod, h)
	last := StatusOK
	if err != nil {
		last = StatusForbidden
	}
	_, _ = c.Write([]byte{byte(last)})
	return err
}

func TestDirectHandshake(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	laptop := &wireTap{Conn: a}
	done := make(chan error, 1)
	go func() { done <- sidecar(b, directKey, "web-1") }()
	if err := OfferDirect(laptop, directKey, "web-1", 9); err != nil {
		t.Fatalf("the laptop's side: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the sidecar's side: %v", err)
	}
	if bytes.Contains(laptop.wrote.Bytes(), directKey) {
		t.Error("the key crossed the stream")
	}
}

// A pod that does not hold the key learns nothing: the laptop stops after
// its hello, before any proof of its own.
func TestDirectHandshakeUnmasksAnImpostor(t *testing.T) {
	a, b := net.Pipe()
	laptop := &wireTap{Conn: a}
	go func() {
		_ = sidecar(b, bytes.Repeat([]byte{1}, DirectKeyLen), "web-1")
		b.Close()
	}()
	if err := OfferDirect(laptop, directKey, "web-1", 9); !errors.Is(err, ErrDirectImpostor) {
		t.Fatalf("against a pod without the key: %v, want ErrDirectImpostor", err)
	}
	a.Close()
	if n := laptop.wrote.Len(); n != len(directMagic)+8+DirectNonceLen {
		t.Errorf("the laptop wrote %d bytes to an impostor, want its hello alone", n)
	}
}

// A look-alike pod that relays the handshake to the real sidecar gets
// nothing: the real sidecar's proof is for its own pod, not the one the
// laptop port-forwarded to.
func TestDirectHandshakeCannotBeRelayed(t *testing.T) {
	laptopSide, fakeIn := net.Pipe()
	fakeOut, realSide := net.Pipe()
	go func() { _ = sidecar(realSide, directKey, "web-1"); realSide.Close() }()
	go func() { // the look-alike copies both ways
		go func() { _, _ = io.Copy(fakeOut, fakeIn) }()
		_, _ = io.Copy(fakeIn, fakeOut)
		fakeIn.Close()
	}()
	if err := OfferDirect(laptopSide, directKey, "web-fake", 9); !errors.Is(err, ErrDirectImpostor) {
		t.Fatalf("through a relaying look-alike: %v, want ErrDirectImpostor", err)
	}
	laptopSide.Close()
}

// A laptop that does not hold the key is refused, and learns that only.
func TestDirectHandshakeRefusesAStranger(t *testing.T) {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- sidecar(b, directKey, "web-1") }()
	nl := make([]byte, DirectNonceLen)
	if err := WriteDirectHello(a, DirectHello{Intercept: 9, Nonce: nl}); err != nil {
		t.Fatal(err)
	}
	var rest [1 + DirectNonceLen + DirectProofLen]byte
	if _, err := io.ReadFull(a, rest[:]); err != nil {
		t.Fatal(err)
	}
	stranger := bytes.Repeat([]byte{2}, DirectKeyLen)
	if _, err := a.Write(DirectProof(stranger, DirectLaptop, "web-1", 9, nl, rest[1:1+DirectNonceLen])); err != nil {
		t.Fatal(err)
	}
	if err := ReadStatus(a); !errors.Is(err, StatusForbidden) {
		t.Errorf("a stranger's proof: %v, want forbidden", err)
	}
	if err := <-done; !errors.Is(err, ErrDirectImpostor) {
		t.Errorf("the sidecar's verdict: %v", err)
	}
}

// FuzzReadDirectHello: any bytes give a hello or an error, never a panic,
// and a hello read is one that writes back the same.
func FuzzReadDirectHello(f *testing.F) {
	var good bytes.Buffer
	_ = WriteDirectHello(&good, DirectHello{Intercept: 3, Nonce: make([]byte, DirectNonceLen)})
	f.Add(good.Bytes())
	f.Add([]byte("TNLD\x00\x00\x00\x00\x00\x00\x00\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadDirectHello(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteDirectHello(&out, h); err != nil || !bytes.Equal(out.Bytes(), b[:out.Len()]) {
			t.Errorf("hello %+v from %x writes back %x, %v", h, b, out.Bytes(), err)
		}
	})
}
