// Package tun is the TUN device and the routes that send the cluster's
// subnets into it; tun/netstack turns its packets into streams.
package tun
