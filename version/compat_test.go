package version

import (
	"strings"
	"testing"
)

func TestCompatible(t *testing.T) {
	for _, tt := range []struct {
		client, manager string
		want            string // "" when compatible, else a part of the sentence
	}{
		{"v1.6.0", "v1.6.0", ""},
		{"v1.6.0", "v1.6.3", ""},
		{"v1.5.2", "v1.6.0", ""},            // one minor behind: served
		{"v1.6.0-3-gabcdef0", "v1.6.1", ""}, // a build past a tag is of its minor
		{"v1.4.0", "v1.6.0", "this tunnel (v1.4.0) is older than the tunnel manager in the cluster (v1.6.0)"},
		{"v1.7.0", "v1.6.0", "the tunnel manager in the cluster (v1.6.0) is older than this tunnel (v1.7.0): run `tunnel install --upgrade`"},
		{"v1.9.0", "v2.0.0", "install tunnel v2.0.0"},
		{"v2.0.0", "v1.9.0", "is older than this tunnel (v2.0.0)"},
		{"8b1a0d1", "8b1a0d1", ""},
		{"8b1a0d1", "9c2b1e2", "are different builds"},
		{"8b1a0d1", "v1.6.0", "are different builds"},
		{"v0.0.0-20260101000000-abcdef012345", "v0.0.0-20260102000000-bcdef0123456", "are different builds"},
	} {
		err := Compatible(tt.client, tt.manager)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("Compatible(%s, %s) = %v, want nil", tt.client, tt.manager, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("Compatible(%s, %s) = %v, want %q in it", tt.client, tt.manager, err, tt.want)
		}
	}
}
