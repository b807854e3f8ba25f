// Package daemon is the privileged half of tunnel on the laptop: it owns the
// TUN device, the routes, the DNS configuration and the session to the
// cluster, restores all of it on quit and repairs what a crash left behind.
package daemon
