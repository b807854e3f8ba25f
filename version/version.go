// Package version says which build of tunnel this is.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by the Makefile: -X tunnel.dev/tunnel/version.version=v0.1.0
// and -X tunnel.dev/tunnel/version.registry=registry.example.com/team (make
// build REGISTRY=...), the registry prefix the agent image is pulled from
// unless --registry or TUNNEL_REGISTRY say otherwise.
var (
	version  = ""
	registry = ""
)

// Registry is the agent image's registry prefix this build was made with,
// or "" when it was made without one.
func Registry() string { return registry }

// Info is what `tunnel version` and `tunnel-agent version` print.
type Info struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	// AgentImage is the agent image this build installs by default, when
	// it was built with a registry (--registry and TUNNEL_REGISTRY aside).
	AgentImage string `json:"agentImage,omitempty"`
}

// Get returns the build's version: the linker's value, else the module
// version and VCS revision the go command recorded, else "dev".
func Get() Info {
	info := Info{Version: version, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				info.Commit = s.Value
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if registry != "" {
		info.AgentImage = registry + "/tunnel-agent:" + info.Version
	}
	return info
}

func (i Info) String() string {
	s := i.Version
	if i.Commit != "" {
		c := i.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (" + c + ")"
	}
	return fmt.Sprintf("%s %s %s/%s", s, i.Go, i.OS, i.Arch)
}
