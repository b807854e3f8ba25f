package rpc

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/yamux"
)

type recorder struct {
	bytes.Buffer
	writes []int
}

func (r *recorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, len(p))
	return r.Buffer.Write(p)
}
func (r *recorder) Close() error { return nil }

func TestCoalesceWrites(t *testing.T) {
	var r recorder
	c := CoalesceWrites(&r)
	dataHdr := []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5}
	windowUpdate := []byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}
	emptyData := []byte{0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0} // FIN on a data frame, no body
	for _, w := range [][]byte{dataHdr, []byte("hello"), windowUpdate, emptyData, dataHdr, []byte("world")} {
		if n, err := c.Write(w); err != nil || n != len(w) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(w), n, err)
		}
	}
	if want := []int{17, 12, 12, 17}; !equalInts(r.writes, want) {
		t.Errorf("writes %v, want %v", r.writes, want)
	}
	want := bytes.Join([][]byte{dataHdr, []byte("hello"), windowUpdate, emptyData, dataHdr, []byte("world")}, nil)
	if !bytes.Equal(r.Bytes(), want) {
		t.Error("the byte stream changed")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A real yamux session over coalesced connections carries streams intact.
func TestCoalesceUnderYamux(t *testing.T) {
	a, b := pipe()
	cli, err := yamux.Client(CoalesceWrites(a), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := yamux.Server(CoalesceWrites(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	defer srv.Close()
	payload := bytes.Repeat([]byte("0123456789"), 100_000)
	go func() {
		s, err := srv.Accept()
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	s, err := cli.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	go func() { s.Write(payload); s.Close() }()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through yamux: %d bytes, %v", len(got), err)
	}
}

type pipeEnd struct {
	io.Reader
	io.WriteCloser
}

func pipe() (io.ReadWriteCloser, io.ReadWriteCloser) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return pipeEnd{ar, aw}, pipeEnd{br, bw}
}
