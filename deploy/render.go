// Package deploy is `tunnel deploy`: it renders a folder of manifest
// templates with parameters, applies them with server-side apply, and waits
// until every workload has rolled out, or says why not.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// ValuesFile, beside the templates, gives the parameters' defaults.
const ValuesFile = "values.yaml"

// ErrBadInput is wrapped by every error about the templates or parameters:
// nothing has been applied when one is returned.
var ErrBadInput = errors.New("bad manifests or parameters")

// Render reads the templates at path (a file, or every *.yaml and *.yml of
// a folder but ValuesFile, in name order), fills them with the defaults of
// the folder's ValuesFile overridden by set, and returns the objects in
// order. A parameter no template names, a name no parameter gives, and a
// template or object that does not parse are errors.
func Render(path string, set map[string]string) ([]*unstructured.Unstructured, error) {
	files, values, err := sources(path)
	if err != nil {
		return nil, err
	}
	params := map[string]any{}
	maps.Copy(params, values)
	for k, v := range set {
		params[k] = v
	}
	named := map[string]bool{}
	var tmpls []*template.Template
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		t, err := template.New(filepath.Base(f)).Option("missingkey=error").Funcs(funcs).Parse(string(b))
		if err != nil {
			return nil, fmt.Errorf("%w: template %v", ErrBadInput, err)
		}
		for _, n := range t.Templates() {
			if n.Tree != nil {
				fields(n.Tree.Root, named)
			}
		}
		tmpls = append(tmpls, t)
	}
	for k := range set {
		if !named[k] {
			return nil, fmt.Errorf("%w: unknown parameter %q: the templates name %s", ErrBadInput, k, list(named))
		}
	}
	for k := range named {
		if _, ok := params[k]; !ok {
			if b, _ := values[BuildKey].(map[string]any); b[k] != nil {
				return nil, fmt.Errorf("%w: parameter %q is an image %s builds: deploy with --build (or give it with --set %s=IMAGE)", ErrBadInput, k, ValuesFile, k)
			}
			return nil, fmt.Errorf("%w: parameter %q has no value: give it with --set %s=VALUE or in %s", ErrBadInput, k, k, ValuesFile)
		}
	}
	structure := func(k string) error {
		return fmt.Errorf("%w: the value of %s would change the manifests' structure (a newline, a document separator, a list or a map); quote it in the template: {{ .%s | quote }}",
			ErrBadInput, k, k)
	}
	objs, err := execute(tmpls, params)
	if err != nil {
		// When a plain word in a --set value's place parses, that value
		// is what broke the manifests.
		for _, k := range slices.Sorted(maps.Keys(set)) {
			plain := maps.Clone(params)
			plain[k] = "tunnelvalue"
			if _, perr := execute(tmpls, plain); perr == nil {
				return nil, structure(k)
			}
		}
		return nil, err
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no objects", ErrBadInput, path)
	}
	// A value may fill in a scalar, never add structure: a newline and
	// "kind: Secret", a document separator, a list. Each --set value is
	// tried against a plain word in its place; the objects must keep their
	// shape.
	want := shapes(objs)
	for _, k := range slices.Sorted(maps.Keys(set)) {
		plain := maps.Clone(params)
		plain[k] = "tunnelvalue"
		alt, err := execute(tmpls, plain)
		if err != nil || shapes(alt) != want {
			return nil, structure(k)
		}
	}
	return objs, nil
}

// funcs are the templates' functions: quote makes any value one YAML
// string (double-quoted, escaped as JSON, which YAML reads the same).
var funcs = template.FuncMap{
	"quote": func(v any) string { return strconv.Quote(fmt.Sprint(v)) },
}

// execute renders every template with params and decodes the objects.
func execute(tmpls []*template.Template, params map[string]any) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for _, t := range tmpls {
		var out bytes.Buffer
		if err := t.Execute(&out, params); err != nil {
			return nil, fmt.Errorf("%w: render %v", ErrBadInput, err)
		}
		docs, err := decode(t.Name(), &out)
		if err != nil {
			return nil, err
		}
		objs = append(objs, docs...)
	}
	return objs, nil
}

// shapes describes objs without their scalars' values: every path with
// the kind of what is there (a map, a list of n, a scalar).
func shapes(objs []*unstructured.Unstructured) string {
	var b strings.Builder
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch t := v.(type) {
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(t)) {
				walk(path+"."+k, t[k])
			}
		case []any:
			fmt.Fprintf(&b, "%s[%d]\n", path, len(t))
			for i, e := range t {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		default:
			b.WriteString(path + "\n")
		}
	}
	for i, o := range objs {
		walk(fmt.Sprintf("#%d", i), o.Object)
	}
	return b.String()
}

// sources lists the templates at path and reads the folder's defaults.
func sources(path string) ([]string, map[string]any, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	dir, files := path, []string{path}
	if st.IsDir() {
		files = nil
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, nil, err
		}
		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") && e.Name() != ValuesFile {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	} else {
		dir = filepath.Dir(path)
	}
	values := map[string]any{}
	b, err := os.ReadFile(filepath.Join(dir, ValuesFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, nil, err
	default:
		if err := yaml.Unmarshal(b, &values); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadInput, ValuesFile, err)
		}
	}
	return files, values, nil
}

// BuildKey is the values.yaml key that names what `deploy --build` builds:
// a map from a template parameter to the Go main package (relative to the
// folder) whose image fills it, e.g. build: {image: ./cmd/shop}.
const BuildKey = "build"

// BuildTargets reads the folder's (or the file's folder's) values.yaml
// for what --build builds; none is an error naming the key.
func BuildTargets(path string) (map[string]string, error) {
	_, values, err := sources(path)
	if err != nil {
		return nil, err
	}
	raw, ok := values[BuildKey]
	if !ok {
		return nil, fmt.Errorf("%w: --build: %s names nothing to build: add %s: {PARAMETER: ./PACKAGE}, e.g. %s: {image: ./cmd/shop}", ErrBadInput, ValuesFile, BuildKey, BuildKey)
	}
	m, ok := raw.(map[string]any)
	if !ok || len(m) == 0 {
		return nil, fmt.Errorf("%w: %s: %s must map parameters to Go packages, e.g. %s: {image: ./cmd/shop}", ErrBadInput, ValuesFile, BuildKey, BuildKey)
	}
	out := map[string]string{}
	for k, v := range m {
		pkg, ok := v.(string)
		if !ok || !(strings.HasPrefix(pkg, "./") || strings.HasPrefix(pkg, "../")) || strings.Contains(pkg, "...") {
			return nil, fmt.Errorf("%w: %s: %s.%s is %v: want one package's path relative to the folder, starting with ./", ErrBadInput, ValuesFile, BuildKey, k, v)
		}
		out[k] = pkg
	}
	return out, nil
}

// fields collects the top-level parameter names a template uses (.name).
func fields(n parse.Node, into map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				fields(c, into)
			}
		}
	case *parse.ActionNode:
		fields(n.Pipe, into)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				fields(c, into)
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			fields(a, into)
		}
	case *parse.FieldNode:
		into[n.Ident[0]] = true
	case *parse.IfNode:
		fields(n.Pipe, into)
		fields(n.List, into)
		fields(n.ElseList, into)
	case *parse.RangeNode:
		fields(n.Pipe, into)
		fields(n.List, into)
		fields(n.ElseList, into)
	case *parse.WithNode:
		fields(n.Pipe, into)
		fields(n.List, into)
		fields(n.ElseList, into)
	}
}

func list(m map[string]bool) string {
	if len(m) == 0 {
		return "no parameters"
	}
	return strings.Join(slices.Sorted(maps.Keys(m)), ", ")
}

// decode splits a rendered file into objects, each with a kind, an
// apiVersion and a name.
func decode(file string, r io.Reader) ([]*unstructured.Unstructured, error) {
	docs := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s, document %d: %v", ErrBadInput, file, i, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc) // a key twice is an error, never the last one winning
		if err != nil {
			return nil, fmt.Errorf("%w: %s, document %d: %v", ErrBadInput, file, i, err)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" || string(t) == "{}" {
			continue // an empty document
		}
		u := &unstructured.Unstructured{}
		// Unstructured's own decoding keeps integers integers.
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%w: %s, document %d: an object needs apiVersion, kind and metadata.name (%v)", ErrBadInput, file, i, err)
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%w: %s, document %d: an object needs apiVersion, kind and metadata.name", ErrBadInput, file, i)
		}
		out = append(out, u)
	}
}
