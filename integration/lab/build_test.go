//go:build linux

package lab

import (
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

func TestBuildModuleFor(t *testing.T) {
	upstream := `module k8s.io/kubernetes

go 1.26.0

require (
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
	github.com/spf13/cobra v1.10.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	github.com/example/fork => github.com/example/other v1.0.0
)
`
	out, err := buildModuleFor([]byte(upstream))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", out, nil)
	if err != nil {
		t.Fatalf("the build module does not parse: %v\n%s", err, out)
	}
	if f.Go.Version != "1.26.0" || len(f.Require) != 1 || f.Require[0].Mod.String() != "k8s.io/kubernetes@"+KubernetesVersion {
		t.Errorf("go %s, requires %v", f.Go.Version, f.Require)
	}
	got := map[string]string{}
	for _, r := range f.Replace {
		got[r.Old.Path] = r.New.String()
	}
	want := map[string]string{"k8s.io/api": "k8s.io/api@v0.37.2", "k8s.io/client-go": "k8s.io/client-go@v0.37.2"}
	if len(got) != len(want) || got["k8s.io/api"] != want["k8s.io/api"] || got["k8s.io/client-go"] != want["k8s.io/client-go"] {
		t.Errorf("replaces = %v, want %v (only the staging modules)", got, want)
	}

	if _, err := buildModuleFor([]byte("module k8s.io/kubernetes\n\ngo 1.26\n")); err == nil || !strings.Contains(err.Error(), "no staging modules") {
		t.Errorf("a go.mod without staging replaces: %v", err)
	}
}
