package version

import (
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	i := Get()
	if i.Version == "" || i.Go == "" {
		t.Fatalf("incomplete version info: %+v", i)
	}
	if !strings.Contains(i.String(), i.Version) {
		t.Fatalf("String() = %q does not name version %q", i.String(), i.Version)
	}
}

func TestCommitShortened(t *testing.T) {
	i := Info{Version: "v1", Commit: "0123456789abcdef0123", Go: "go1.26", OS: "linux", Arch: "amd64"}
	if got, want := i.String(), "v1 (0123456789ab) go1.26 linux/amd64"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestCommand(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    string
		wantErr bool
	}{
		{args: nil, want: "tunnel " + Get().Version},
		{args: []string{"-o", "json"}, want: `"version": "` + Get().Version + `"`},
		{args: []string{"-o", "yaml"}, wantErr: true},
		{args: []string{"extra"}, wantErr: true},
	} {
		cmd := Command("tunnel")
		var out strings.Builder
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if (err != nil) != tc.wantErr {
			t.Fatalf("%v: err = %v, want error %v", tc.args, err, tc.wantErr)
		}
		if !tc.wantErr && !strings.Contains(out.String(), tc.want) {
			t.Fatalf("%v: printed %q, want it to contain %q", tc.args, out.String(), tc.want)
		}
	}
}
