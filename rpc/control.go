package rpc

import (
	"context"
	"net"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// DialControl returns a gRPC client whose connections are control streams
// of mux: a laptop's and a sidecar's way to call the manager.
func DialControl(mux *yamux.Session) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///manager",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			st, err := mux.OpenStream()
			if err != nil {
				return nil, err
			}
			if err := WriteHeader(st, Header{Kind: KindControl}); err != nil {
				st.Close()
				return nil, err
			}
			return st, nil
		}))
}
