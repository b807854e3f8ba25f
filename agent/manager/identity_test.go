package manager

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
	"tunnel.dev/tunnel/version"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"tunnel.dev/tunnel/rpc"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// proofCSR is the CertificateSigningRequest a laptop creates (see
// daemon/identity.go), with what the API server would add: the requester
// and the creation time. cn is the request's common name.
func proofCSR(t *testing.T, name, cn string) *certv1.CertificateSigningRequest {
	csr, _ := proofCSRKey(t, name, cn)
	return csr
}

// proofCSRKey is proofCSR with the key that only its laptop holds.
func proofCSRKey(t *testing.T, name, cn string) (*certv1.CertificateSigningRequest, ed25519.PrivateKey) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.Now()},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: rpc.IdentitySigner,
			Usages:     []certv1.KeyUsage{certv1.UsageClientAuth},
			Username:   "dev",
			Groups:     []string{"devs", "system:authenticated"},
			UID:        "uid-dev",
		},
	}, key
}

func TestCSRIdentifier(t *testing.T) {
	const name = rpc.IdentityPrefix + "abc123"
	nonce := []byte("the session's nonce")
	for _, tc := range []struct {
		desc   string
		proof  string
		mod    func(*certv1.CertificateSigningRequest) // nil: no CSR in the cluster
		errSay string                                  // "" means it must succeed
		sign   func(key ed25519.PrivateKey) []byte     // nil: the laptop's own signature
	}{
		{"valid", name, func(*certv1.CertificateSigningRequest) {}, "", nil},
		// Someone who may list CSRs reads the proof's name and races the
		// laptop's Hello: without the key the proof is worth nothing.
		{"no signature", name, func(*certv1.CertificateSigningRequest) {}, "did not sign", func(ed25519.PrivateKey) []byte { return nil }},
		{"signed by another key", name, func(*certv1.CertificateSigningRequest) {}, "did not sign", func(ed25519.PrivateKey) []byte {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			return ed25519.Sign(other, rpc.ProofMessage(nonce, name))
		}},
		{"signed over another session's nonce", name, func(*certv1.CertificateSigningRequest) {}, "did not sign", func(k ed25519.PrivateKey) []byte {
			return ed25519.Sign(k, rpc.ProofMessage([]byte("another nonce"), name))
		}},
		{"wrong signer", name, func(c *certv1.CertificateSigningRequest) { c.Spec.SignerName = "kubernetes.io/kube-apiserver-client" }, "signer", nil},
		{"common name mismatch", name, func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = proofCSR(t, name, rpc.IdentityPrefix+"other").Spec.Request
		}, "names", nil},
		{"no PEM", name, func(c *certv1.CertificateSigningRequest) { c.Spec.Request = []byte("not pem") }, "no PEM", nil},
		{"bad request", name, func(c *certv1.CertificateSigningRequest) {
			c.Spec.Request = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}})
		}, name, nil},
		{"stale", name, func(c *certv1.CertificateSigningRequest) {
			c.CreationTimestamp = metav1.NewTime(time.Now().Add(-5 * time.Minute))
		}, "old", nil},
		{"no requester", name, func(c *certv1.CertificateSigningRequest) { c.Spec.Username = "" }, "no requester", nil},
		{"missing", name, nil, "read proof", nil},
		{"not a proof name", "kubelet-serving-abc", func(c *certv1.CertificateSigningRequest) {
			c.Name = "kubelet-serving-abc"
			c.Spec.Request = proofCSR(t, name, "kubelet-serving-abc").Spec.Request
		}, "not a tunnel session proof", nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cs := fake.NewClientset()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var key ed25519.PrivateKey
			if tc.mod != nil {
				var csr *certv1.CertificateSigningRequest
				csr, key = proofCSRKey(t, name, name)
				tc.mod(csr)
				if _, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			var sig []byte
			switch {
			case tc.sign != nil:
				sig = tc.sign(key)
			case key != nil:
				sig = ed25519.Sign(key, rpc.ProofMessage(nonce, tc.proof))
			}
			id, err := csrIdentifier(cs)(ctx, proofClaim{Name: tc.proof, Nonce: nonce, Signature: sig})
			user := id.User
			switch {
			case tc.errSay == "" && (err != nil || user != "dev" || id.UID != "uid-dev" || len(id.Groups) != 2):
				t.Fatalf("identify = %+v, %v; want dev with its uid and groups", id, err)
			case tc.errSay != "" && err == nil:
				t.Fatalf("identify = %q, want an error", user)
			case tc.errSay != "" && !strings.Contains(err.Error(), tc.errSay):
				t.Errorf("error %q does not say %q", err, tc.errSay)
			}
			_, gerr := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, tc.proof, metav1.GetOptions{})
			if strings.HasPrefix(tc.proof, rpc.IdentityPrefix) {
				// A proof once read serves no second session, good or bad.
				if !apierrors.IsNotFound(gerr) {
					t.Errorf("after identify, get the proof: %v; want it deleted", gerr)
				}
			} else if gerr != nil {
				t.Errorf("identify deleted %s, which is no proof: %v", tc.proof, gerr)
			}
		})
	}
}

// fakeIdentify knows one proof: ada's.
func fakeIdentify(_ context.Context, c proofClaim) (Identity, error) {
	if c.Name == "proof-ada" {
		return Identity{User: "ada", Groups: []string{"system:authenticated"}}, nil
	}
	return Identity{}, fmt.Errorf("proof %q is unknown", c.Name)
}

func TestInterceptsOverGRPC(t *testing.T) {
	m, _ := newTestManager(t, nil)
	m.identify = fakeIdentify
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A sidecar of shop/web watches before anything exists.
	watch, err := controlClient(t, laptop(t, addr)).WatchIntercepts(ctx,
		&managerpb.WatchInterceptsRequest{Namespace: "shop", Workload: "web", Pod: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	if set, err := watch.Recv(); err != nil || len(set.GetIntercepts()) != 0 {
		t.Fatalf("first set %v, %v; want an empty one", set, err)
	}

	adaSess := laptop(t, addr)
	ada := controlClient(t, adaSess)
	spec := &managerpb.InterceptSpec{Name: "a", Namespace: "shop", Workload: "web", Port: 8080,
		Mode: managerpb.InterceptMode_PERSONAL, HeaderName: "x-dev", HeaderValue: "ada", LaptopId: 7}
	if _, err := ada.CreateIntercept(ctx, spec); status.Code(err) != codes.Unauthenticated {
		t.Errorf("CreateIntercept before Hello: %v, want Unauthenticated", err)
	}
	hello, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, User: "ada", Host: "lovelace", IdentityProof: "proof-ada"})
	if err != nil {
		t.Fatal(err)
	}
	if hello.GetUser() != "ada" || hello.GetIdentityError() != "" {
		t.Errorf("Hello with a good proof: user %q, identity error %q", hello.GetUser(), hello.GetIdentityError())
	}
	ic, err := ada.CreateIntercept(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if ic.GetUser() != "ada" || ic.GetHost() != "lovelace" || ic.GetSessionId() != hello.GetSessionId() || ic.GetSpec().GetHeaderName() != "X-Dev" {
		t.Errorf("created %v", ic)
	}
	set, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := set.GetIntercepts(); len(got) != 1 || got[0].GetId() != ic.GetId() || got[0].GetSpec().GetHeaderValue() != "ada" {
		t.Errorf("the sidecar got %v, want ada's intercept with its header value", got)
	}

	// A session whose proof fails, or that has none, may not intercept.
	for _, proof := range []string{"forged", ""} {
		eve := controlClient(t, laptop(t, addr))
		h, err := eve.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, User: "ada", Host: "eve", IdentityProof: proof})
		if err != nil {
			t.Fatal(err)
		}
		if h.GetUser() != "" || h.GetIdentityError() == "" {
			t.Errorf("Hello with proof %q: user %q, identity error %q; want no user and a reason", proof, h.GetUser(), h.GetIdentityError())
		}
		spec2 := &managerpb.InterceptSpec{Name: "e", Namespace: "shop", Workload: "web", Port: 8080,
			Mode: managerpb.InterceptMode_PERSONAL, HeaderName: "X-Dev", HeaderValue: "eve"}
		_, err = eve.CreateIntercept(ctx, spec2)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), h.GetIdentityError()) {
			t.Errorf("CreateIntercept after Hello with proof %q: %v; want Unauthenticated saying %q", proof, err, h.GetIdentityError())
		}
		if _, err := eve.RemoveIntercept(ctx, &managerpb.RemoveInterceptRequest{Namespace: "shop", Name: "a"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("RemoveIntercept of ada's: %v, want PermissionDenied", err)
		}
	}
	list, err := controlClient(t, laptop(t, addr)).ListIntercepts(ctx, &managerpb.ListInterceptsRequest{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if got := list.GetIntercepts(); len(got) != 1 || got[0].GetSpec().GetHeaderValue() != "(hidden)" {
		t.Errorf("eve's list %v, want ada's intercept with its value hidden", got)
	}

	// Ada's laptop goes: her intercept goes with it.
	adaSess.Close()
	set, err = watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(set.GetIntercepts()) != 0 {
		t.Errorf("after ada's session closed the sidecar got %v, want an empty set", set.GetIntercepts())
	}
}

func TestInterceptedStreamReachesTheLaptop(t *testing.T) {
	m, _ := newTestManager(t, nil)
	m.identify = fakeIdentify
	addr := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	adaSess := laptop(t, addr)
	ada := controlClient(t, adaSess)
	if _, err := ada.Hello(ctx, &managerpb.HelloRequest{ClientVersion: version.Get().Version, Host: "lovelace", IdentityProof: "proof-ada"}); err != nil {
		t.Fatal(err)
	}
	ic, err := ada.CreateIntercept(ctx, &managerpb.InterceptSpec{Name: "a", Namespace: "shop", Workload: "web", Port: 8080,
		Mode: managerpb.InterceptMode_GLOBAL, LaptopId: 7})
	if err != nil {
		t.Fatal(err)
	}
	// The laptop answers the manager's stream: checks its header, says OK, echoes.
	client := netip.MustParseAddrPort("10.244.1.5:43210")
	laptopErr := make(chan error, 1)
	go func() {
		st, err := adaSess.AcceptStream()
		if err != nil {
			laptopErr <- err
			return
		}
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		h, err := rpc.ReadHeader(st)
		if err == nil && (h.Kind != rpc.KindIntercept || h.Flow != 7 || h.Dst != client) {
			err = fmt.Errorf("laptop got header %+v, want intercept 7 from %s", h, client)
		}
		if err == nil {
			_, err = st.Write([]byte{byte(rpc.StatusOK)})
		}
		if err == nil {
			_, err = io.Copy(st, st)
		}
		laptopErr <- err
	}()

	// A sidecar of another workload may not reach ada's laptop.
	other := laptop(t, addr)
	watch(t, ctx, other, "shop", "cart")
	if err := rpc.ReadStatus(openStream(t, other, rpc.Header{Kind: rpc.KindIntercept, Dst: client, Flow: ic.GetId()})); err != rpc.StatusUnreachable {
		t.Errorf("a sidecar of another workload: %v, want %v", err, rpc.StatusUnreachable)
	}

	sidecar := laptop(t, addr) // from loopback: newTestManager allows it
	watch(t, ctx, sidecar, "shop", "web")
	st := openStream(t, sidecar, rpc.Header{Kind: rpc.KindIntercept, Dst: client, Flow: ic.GetId()})
	if _, err := st.Write([]byte("ping")); err != nil { // before the status: it travels with the header
		t.Fatal(err)
	}
	if err := rpc.ReadStatus(st); err != nil {
		t.Fatalf("status: %v", err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	st.Close()
	if rest, err := io.ReadAll(st); err != nil || len(rest) != 0 {
		t.Errorf("after our close: %q, %v; want EOF", rest, err)
	}
	select {
	case err := <-laptopErr:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the laptop's stream did not end")
	}

	// An intercept the manager does not know is unreachable.
	gone := openStream(t, sidecar, rpc.Header{Kind: rpc.KindIntercept, Dst: client, Flow: ic.GetId() + 100})
	if err := rpc.ReadStatus(gone); !errors.Is(err, rpc.StatusUnreachable) {
		t.Errorf("status for an unknown intercept: %v, want %v", err, rpc.StatusUnreachable)
	}
}

func TestInterceptStreamFromALaptopIsRefused(t *testing.T) {
	m, _ := newTestManager(t, func(c *Config) { c.AllowLoopback = false })
	sess := laptop(t, serve(t, m))
	st := openStream(t, sess, rpc.Header{Kind: rpc.KindIntercept, Dst: netip.MustParseAddrPort("10.244.1.5:1"), Flow: 1})
	if err := rpc.ReadStatus(st); !errors.Is(err, rpc.StatusForbidden) {
		t.Errorf("status %v, want %v", err, rpc.StatusForbidden)
	}
}

// watch makes a session a sidecar of ns/workload, as a real sidecar does
// before it sends intercepted connections.
func watch(t *testing.T, ctx context.Context, sess *yamux.Session, ns, workload string) {
	t.Helper()
	w, err := controlClient(t, sess).WatchIntercepts(ctx, &managerpb.WatchInterceptsRequest{Namespace: ns, Workload: workload})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}
}
