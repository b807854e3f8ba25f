package rpc

import "fmt"

// Reach rules: what a laptop's session may dial through the manager. The
// install names one (tunnel install --reach), the manager applies it.
const (
	// ReachNamespaces: pod and Service addresses of the namespaces where the
	// session's user may create pods/portforward, which is what the user
	// could reach with kubectl port-forward anyway. The default.
	ReachNamespaces = "namespaces"
	// ReachCluster: any pod or Service address, whatever the user's rights.
	ReachCluster = "cluster"
)

// ParseReach checks a --reach value.
func ParseReach(s string) (string, error) {
	switch s {
	case ReachNamespaces, ReachCluster:
		return s, nil
	}
	return "", fmt.Errorf("--reach %q: want %s or %s", s, ReachNamespaces, ReachCluster)
}
