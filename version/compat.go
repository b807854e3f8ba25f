package version

import (
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// The rule between the parts of tunnel: a manager serves clients (CLIs,
// their daemons, sidecars) of its own minor version and of the one before,
// so a cluster's manager can be upgraded first and laptops follow. A
// development build (a version that is not vMAJOR.MINOR.PATCH[-...], such as
// a bare commit) serves only clients of exactly its version.

// Compatible returns nil when a client of version client may use a
// manager of version manager, else one sentence saying which is older and
// what to run.
func Compatible(client, manager string) error {
	if client == manager {
		return nil
	}
	if !released(client) || !released(manager) {
		return fmt.Errorf("this tunnel (%s) and the tunnel manager in the cluster (%s) are different builds: run `tunnel install --upgrade` to move the manager to this one, or use the tunnel that matches it", client, manager)
	}
	cmp := semver.Compare(semver.MajorMinor(client), semver.MajorMinor(manager))
	switch {
	case cmp == 0:
		return nil
	case cmp > 0:
		return fmt.Errorf("the tunnel manager in the cluster (%s) is older than this tunnel (%s): run `tunnel install --upgrade` to move it to %s", manager, client, client)
	case semver.Major(client) == semver.Major(manager) && minor(manager)-minor(client) == 1:
		return nil
	}
	return fmt.Errorf("this tunnel (%s) is older than the tunnel manager in the cluster (%s), which serves %s and the minor version before: install tunnel %s", client, manager, semver.MajorMinor(manager), manager)
}

// minor is the minor number of a valid semantic version.
func minor(v string) int {
	var major, minor int
	_, _ = fmt.Sscanf(semver.MajorMinor(v), "v%d.%d", &major, &minor)
	return minor
}

// released says whether v is of a release line: valid semver, and not a
// Go pseudo-version of an untagged tree (v0.0.0-20260101000000-abcdef).
func released(v string) bool {
	return semver.IsValid(v) && !strings.HasPrefix(v, "v0.0.0-")
}
