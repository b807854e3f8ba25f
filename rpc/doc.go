// Package rpc holds everything the laptop and the cluster must agree on: the
// protobuf contracts of the control plane and the header that opens each
// stream.
package rpc
