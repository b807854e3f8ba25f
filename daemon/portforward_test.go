package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// A server (or a proxy before it) that will not upgrade to SPDY sends the
// dial on to WebSocket; one that refuses WebSocket too is reported.
func TestPortForwardFallsBackFromSPDYToWebSocket(t *testing.T) {
	var upgrades []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upgrades = append(upgrades, r.Header.Get("Upgrade"))
		http.Error(w, "no upgrades here", http.StatusBadRequest)
	}))
	defer srv.Close()
	rc := &rest.Config{Host: srv.URL}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialPortForwardConn(context.Background(), rc, cs, "dev", "web-1")
	if err == nil {
		t.Fatal("a server that upgrades nothing gave a port-forward")
	}
	if len(upgrades) != 2 || upgrades[0] != "SPDY/3.1" || upgrades[1] != "websocket" {
		t.Errorf("upgrades asked for: %q, want SPDY/3.1 then websocket", upgrades)
	}
}
