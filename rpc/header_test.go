package rpc

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Kind: KindControl},
		{Kind: KindTCP, Dst: netip.MustParseAddrPort("10.96.0.10:53"), Flow: 1},
		{Kind: KindUDP, Dst: netip.MustParseAddrPort("[fd00::1]:9001"), Flow: 1 << 60},
		{Kind: KindTCP, Dst: netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"), Flow: 7}, // sent as IPv4
	} {
		var b bytes.Buffer
		if err := WriteHeader(&b, h); err != nil {
			t.Fatal(err)
		}
		b.WriteString("payload")
		got, err := ReadHeader(&b)
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		want := h
		want.Dst = netip.AddrPortFrom(h.Dst.Addr().Unmap(), h.Dst.Port())
		if h.Kind == KindControl {
			want = Header{Kind: KindControl}
		}
		if got != want {
			t.Errorf("round trip of %+v gave %+v", h, got)
		}
		if rest, _ := io.ReadAll(&b); string(rest) != "payload" {
			t.Errorf("ReadHeader read past the header: %q left", rest)
		}
	}
}

func TestReadHeaderRejects(t *testing.T) {
	for name, raw := range map[string][]byte{
		"empty":              {},
		"wrong version":      {2, byte(KindTCP), 4},
		"unknown kind":       {Version, 9, 0},
		"control with addr":  {Version, byte(KindControl), 4},
		"bad address length": {Version, byte(KindTCP), 5},
		"short address":      {Version, byte(KindTCP), 4, 10, 0},
	} {
		if _, err := ReadHeader(bytes.NewReader(raw)); err == nil {
			t.Errorf("%s: accepted %v", name, raw)
		}
	}
	if err := WriteHeader(io.Discard, Header{Kind: KindTCP}); !errors.Is(err, ErrBadHeader) {
		t.Errorf("WriteHeader without destination: %v", err)
	}
}

func TestStatus(t *testing.T) {
	if err := ReadStatus(bytes.NewReader([]byte{byte(StatusOK)})); err != nil {
		t.Fatal(err)
	}
	err := ReadStatus(bytes.NewReader([]byte{byte(StatusRefused)}))
	var s Status
	if !errors.As(err, &s) || s != StatusRefused {
		t.Fatalf("ReadStatus(refused) = %v", err)
	}
	if err := ReadStatus(bytes.NewReader(nil)); err == nil {
		t.Fatal("ReadStatus of nothing succeeded")
	}
}

func TestDatagrams(t *testing.T) {
	var b bytes.Buffer
	for _, d := range [][]byte{[]byte("one"), {}, bytes.Repeat([]byte{7}, MaxDatagram)} {
		if err := WriteDatagram(&b, d); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, MaxDatagram)
	for _, want := range []int{3, 0, MaxDatagram} {
		n, err := ReadDatagram(&b, buf)
		if err != nil || n != want {
			t.Fatalf("ReadDatagram = %d, %v; want %d", n, err, want)
		}
	}
	if err := WriteDatagram(io.Discard, make([]byte, MaxDatagram+1)); err == nil {
		t.Fatal("an oversized datagram was written")
	}
	if _, err := ReadDatagram(bytes.NewReader([]byte{0, 10, 1}), buf); err == nil {
		t.Fatal("a truncated datagram was read")
	}
}

// FuzzReadHeader: no input makes ReadHeader panic or read past what it
// declares, and whatever it accepts survives a write and a read unchanged.
func FuzzReadHeader(f *testing.F) {
	f.Add(AppendHeader(nil, Header{Kind: KindControl}))
	f.Add(AppendHeader(nil, Header{Kind: KindTCP, Dst: netip.MustParseAddrPort("10.0.0.1:80"), Flow: 3}))
	f.Add(AppendHeader(nil, Header{Kind: KindUDP, Dst: netip.MustParseAddrPort("[fd00::1]:53"), Flow: 9}))
	f.Add([]byte{1, 2, 16})
	f.Fuzz(func(t *testing.T, raw []byte) {
		r := bytes.NewReader(raw)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		if used := len(raw) - r.Len(); used > MaxHeaderLen {
			t.Fatalf("read %d bytes, more than a header", used)
		}
		again, err := ReadHeader(bytes.NewReader(AppendHeader(nil, h)))
		if err != nil || again != h {
			t.Fatalf("header %+v read back as %+v, %v", h, again, err)
		}
	})
}

// FuzzReadDatagram: any framing gives a datagram that fits the buffer or an
// error, never a panic or a read past the frame.
func FuzzReadDatagram(f *testing.F) {
	var good bytes.Buffer
	_ = WriteDatagram(&good, []byte("ping"))
	f.Add(good.Bytes(), 8)
	f.Add([]byte{0xff, 0xff, 1, 2}, 16)
	f.Add([]byte{0}, 4)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, b []byte, size int) {
		if size < 0 || size > MaxDatagram {
			return
		}
		buf := make([]byte, size)
		r := bytes.NewReader(b)
		n, err := ReadDatagram(r, buf)
		if err != nil {
			return
		}
		if n > size || len(b)-r.Len() != 2+n {
			t.Errorf("read %d bytes of a %d-byte buffer, consumed %d of %x", n, size, len(b)-r.Len(), b)
		}
	})
}
