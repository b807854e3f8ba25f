package dns

import (
	"strings"

	"golang.org/x/net/publicsuffix"
)

// IsPublicLabel reports whether a single label is a top-level domain of the
// public suffix list's ICANN section (com, dev, io, shop): a namespace of
// that name must never make the laptop answer public names (github.com,
// go.dev) from the cluster, nor take them from the machine's resolvers.
// Unlisted labels (the list's default rule) are not public.
func IsPublicLabel(label string) bool {
	label = strings.ToLower(strings.TrimSuffix(label, "."))
	if label == "" || strings.Contains(label, ".") {
		return false
	}
	suffix, icann := publicsuffix.PublicSuffix("x." + label)
	// "*.ck" makes every name under ck a suffix of its own: ck is public too.
	return icann && (suffix == label || strings.HasSuffix(suffix, "."+label))
}

// IsPublicSuffix reports whether name (fully qualified or not) is itself a
// public suffix of the ICANN section, such as com or co.uk: no cluster
// domain may be one, or every name under it would go to the cluster.
func IsPublicSuffix(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return false
	}
	suffix, icann := publicsuffix.PublicSuffix(name)
	return icann && suffix == name
}
