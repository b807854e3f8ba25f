//go:build linux

package lab

import (
	"encoding/json"
	"io/fs"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// Every template renders with the lab's values and parses as what it is.
func TestTemplatesRender(t *testing.T) {
	p := Paths{State: "/state", Cache: "/cache"}
	d := newTemplateData(p, Config{ClusterDomain: "tunnel.test"}.Defaults())
	d.PodSubnet = "10.244.0.0/24"
	names, err := fs.Glob(configFiles, "config/*")
	if err != nil || len(names) == 0 {
		t.Fatalf("no templates: %v", err)
	}
	for _, name := range names {
		name = strings.TrimPrefix(name, "config/")
		out, err := render(name, d)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if strings.Contains(string(out), "<no value>") {
			t.Errorf("%s uses a value the lab does not set:\n%s", name, out)
		}
		switch {
		case strings.HasSuffix(name, ".conflist"):
			var v map[string]any
			if err := json.Unmarshal(out, &v); err != nil {
				t.Errorf("%s is not JSON: %v", name, err)
			}
		case strings.HasSuffix(name, ".yaml"):
			for i, doc := range strings.Split(string(out), "\n---\n") {
				var v map[string]any
				if err := yaml.Unmarshal([]byte(doc), &v); err != nil || v["kind"] == nil {
					t.Errorf("%s document %d is not a Kubernetes object: %v", name, i, err)
				}
			}
		}
	}
	for tmpl := range nodeConfigFiles {
		if _, err := configFiles.Open("config/" + tmpl); err != nil {
			t.Errorf("node config %s has no template: %v", tmpl, err)
		}
	}
}

func TestKubeletConfigNamesTheDomainAndDNS(t *testing.T) {
	d := newTemplateData(Paths{State: "/s"}, Config{ServiceCIDR: "10.113.0.0/20", ClusterDomain: "tunnel.test"}.Defaults())
	out, err := render("kubelet.yaml", d)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		ClusterDomain string   `json:"clusterDomain"`
		ClusterDNS    []string `json:"clusterDNS"`
		ResolvConf    string   `json:"resolvConf"`
	}
	if err := yaml.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	if v.ClusterDomain != "tunnel.test" || len(v.ClusterDNS) != 1 || v.ClusterDNS[0] != "10.113.0.10" || v.ResolvConf != "/s/kubelet/resolv.conf" {
		t.Errorf("kubelet config: %+v", v)
	}
}
