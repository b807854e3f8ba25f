package rpc

// The contracts are generated with protoc and the Go plugins `make generate`
// installs at pinned versions; the generated files are committed.
//go:generate protoc --go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. manager/manager.proto daemon/daemon.proto
