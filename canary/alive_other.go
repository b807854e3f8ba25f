//go:build !unix

package canary

// alive cannot tell here; the lease's time decides.
func alive(int) bool { return true }
