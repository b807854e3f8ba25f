package deploy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const app = `apiVersion: apps/v1
kind: Deployment
metadata: {name: {{ .name }}}
spec:
  replicas: {{ .replicas }}
  template:
    spec:
      containers: [{name: app, image: "{{ .image }}"}]
---
apiVersion: v1
kind: Service
metadata: {name: {{ .name }}}
`

func TestRenderFillsParameters(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"app.yaml":  app,
		ValuesFile:  "name: shop\nreplicas: 1\nimage: shop:1.0\n",
		"notes.txt": "not a template",
		"empty.yml": "---\n",
	})
	objs, err := Render(dir, map[string]string{"image": "shop:1.1", "replicas": "3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetKind() != "Deployment" || objs[1].GetKind() != "Service" || objs[1].GetName() != "shop" {
		t.Fatalf("objects: %v", objs)
	}
	if r := objs[0].Object["spec"].(map[string]any)["replicas"]; r != int64(3) {
		t.Errorf("replicas %v (%T), want 3 from --set", r, r)
	}
	c := objs[0].Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	if c["image"] != "shop:1.1" {
		t.Errorf("image %v, want the --set value over values.yaml's", c["image"])
	}
}

func TestRenderRefusesBeforeAnythingIsApplied(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		set   map[string]string
		want  string
	}{
		"unknown parameter": {map[string]string{"a.yaml": app, ValuesFile: "name: a\nreplicas: 1\nimage: x\n"}, map[string]string{"imgae": "y"}, `unknown parameter "imgae": the templates name image, name, replicas`},
		"no value":          {map[string]string{"a.yaml": app}, map[string]string{"name": "a", "image": "x"}, `parameter "replicas" has no value`},
		"bad template":      {map[string]string{"a.yaml": "metadata: {name: {{ .name }"}, nil, "template"},
		"not an object":     {map[string]string{"a.yaml": "just: a map\n"}, nil, "needs apiVersion, kind and metadata.name"},
		"not yaml":          {map[string]string{"a.yaml": "kind: [unclosed\n"}, nil, "document 1"},
		"nothing":           {map[string]string{"a.yaml": "# only a comment\n"}, nil, "holds no objects"},
		"bad values":        {map[string]string{"a.yaml": app, ValuesFile: "[1, 2"}, nil, ValuesFile},
	} {
		_, err := Render(writeFiles(t, tc.files), tc.set)
		if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadInput saying %q", name, err, tc.want)
		}
	}
	if _, err := Render(filepath.Join(t.TempDir(), "missing"), nil); !errors.Is(err, ErrBadInput) {
		t.Errorf("a path that is not there: %v", err)
	}
}

func TestRenderOneFileUsesItsFoldersValues(t *testing.T) {
	dir := writeFiles(t, map[string]string{"app.yaml": app, ValuesFile: "name: one\nreplicas: 2\nimage: x\n"})
	objs, err := Render(filepath.Join(dir, "app.yaml"), nil)
	if err != nil || len(objs) != 2 || objs[0].GetName() != "one" {
		t.Fatalf("%v %v", objs, err)
	}
}

func TestDiffNamesChangedLeaves(t *testing.T) {
	live := map[string]any{"metadata": map[string]any{"name": "a", "resourceVersion": "7", "annotations": map[string]any{"deployment.kubernetes.io/revision": "2"}},
		"spec": map[string]any{"replicas": int64(2), "image": "x"}, "status": map[string]any{"ready": true}}
	dry := map[string]any{"metadata": map[string]any{"name": "a", "resourceVersion": "8"},
		"spec": map[string]any{"replicas": int64(3), "image": "x", "paused": true}}
	got := diff("", comparable(live), comparable(dry))
	want := []string{"spec.paused: (none) → true", "spec.replicas: 2 → 3"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("diff = %q, want %q", got, want)
	}
	if d := diff("", comparable(live), comparable(live)); len(d) != 0 {
		t.Errorf("an object against itself: %q", d)
	}
}

// A --set value fills in a scalar and nothing more: one that would add a
// field, an object or a list is refused, unless the template quotes it.
func TestRenderRefusesValuesThatChangeTheStructure(t *testing.T) {
	const tmpl = `apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data:
  greeting: {{ .greeting }}
  motto: {{ .motto | quote }}
`
	dir := writeFiles(t, map[string]string{"cm.yaml": tmpl, ValuesFile: "greeting: hi\nmotto: go\n"})
	for _, v := range []string{
		"hi\n  extra: injected",
		"hi\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: stolen}",
		"[a, b]",
		"{a: b}",
		"hi\n  motto: evil", // a key the template sets after it: YAML would keep the last
	} {
		if _, err := Render(dir, map[string]string{"greeting": v}); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "quote it in the template") {
			t.Errorf("greeting %q: %v, want refused", v, err)
		}
	}
	for _, v := range []string{"plain words", "hi: there\n---\nkind: Secret", "[a, b]", `"quoted"`} {
		objs, err := Render(dir, map[string]string{"motto": v})
		if err != nil {
			t.Errorf("a quoted motto %q: %v", v, err)
			continue
		}
		if got := objs[0].Object["data"].(map[string]any)["motto"]; got != v || len(objs) != 1 {
			t.Errorf("a quoted motto %q became %q in %d objects", v, got, len(objs))
		}
	}
	if _, err := Render(dir, map[string]string{"greeting": "hello there"}); err != nil {
		t.Errorf("a plain value: %v", err)
	}
}

func TestBuildTargets(t *testing.T) {
	dir := writeFiles(t, map[string]string{"app.yaml": app, ValuesFile: "name: shop\nbuild: {image: ./cmd/shop, worker: ../cmd/worker}\n"})
	got, err := BuildTargets(dir)
	if err != nil || len(got) != 2 || got["image"] != "./cmd/shop" || got["worker"] != "../cmd/worker" {
		t.Fatalf("BuildTargets = %v, %v", got, err)
	}
	for values, want := range map[string]string{
		"name: shop\n":                        "names nothing to build",
		"build: ./cmd/shop\n":                 "must map parameters to Go packages",
		"build: {image: cmd/shop}\n":          "want one package's path relative to the folder",
		"build: {image: [./a, ./b]}\n":        "want one package's path relative to the folder",
		"build: {image: example.com/x/cmd}\n": "want one package's path relative to the folder",
		"build: {image: ./cmd/...}\n":         "want one package's path relative to the folder",
	} {
		dir := writeFiles(t, map[string]string{"app.yaml": app, ValuesFile: values})
		if _, err := BuildTargets(dir); err == nil || !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", values, err, want)
		}
	}
}

func TestBuiltParameterNeedsBuild(t *testing.T) {
	dir := writeFiles(t, map[string]string{"app.yaml": app, ValuesFile: "name: shop\nreplicas: 1\nbuild: {image: ./cmd/shop}\n"})
	if _, err := Render(dir, nil); err == nil || !strings.Contains(err.Error(), "deploy with --build") {
		t.Errorf("a built parameter without --build: %v", err)
	}
}
