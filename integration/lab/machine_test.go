//go:build linux

package lab

import (
	"reflect"
	"testing"
)

func TestMachineDiff(t *testing.T) {
	before := machineState{Links: []string{"lo:", "eth0:"}, Netns: []string{"x"}}
	same := machineState{Links: []string{"eth0:", "lo:"}, Netns: []string{"x"}}
	if d := before.diff(same); len(d) != 0 {
		t.Fatalf("diff of equal states: %v", d)
	}
	after := machineState{Links: []string{"lo:", "eth0:", "tlab-host:"}, Routes: []string{"10.209.0.1 via 10.208.0.2"}}
	want := []string{"link added: tlab-host:", "route added: 10.209.0.1 via 10.208.0.2", "netns removed: x"}
	if got := before.diff(after); !reflect.DeepEqual(got, want) {
		t.Fatalf("diff = %q, want %q", got, want)
	}
}
