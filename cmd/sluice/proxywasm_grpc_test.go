package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-proxy/sluice/samples/grpc/greeter"
)

// TestWasmGrpcCall: a proxy-wasm filter calls grpc.health.v1.Health/Check
// (proxy_grpc_call) on an HTTP/2 cluster serving the sample gRPC service,
// and hands the status and response message to the app upstream in a
// request header. A request whose call fails gets the guest's local reply.
func TestWasmGrpcCall(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := greeter.New()
	go svc.Serve(lis)
	t.Cleanup(svc.Stop)

	seen := make(chan string, 4)
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("X-Grpc-Result")
		io.WriteString(w, "app")
	})
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	src := `
upstream grpc_cluster {
  endpoint ` + lis.Addr().String() + `
  protocol http2
}
upstream app {
  endpoint ` + app.addr() + `
}
listener main 127.0.0.1:1 {
  wasm "` + module + `" config "mode=grpccall"
  route all {
    proxy app
  }
}
`
	path := filepath.Join(t.TempDir(), "grpc.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	srv := startServer(t, res.Snapshot)
	base := "http://" + srv.ListenerAddr("main").String()

	for _, p := range []string{"/", "/raw"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "app" {
			t.Fatalf("%s: status %d body %q", p, resp.StatusCode, body)
		}
		// OK, and HealthCheckResponse{status: SERVING} is 08 01.
		if got := <-seen; got != "0 0801" {
			t.Errorf("%s: upstream saw x-grpc-result %q, want \"0 0801\"", p, got)
		}
	}

	// The service is gone: the call fails, the guest answers.
	svc.Stop()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || len(body) < 8 || string(body[:8]) != "grpc 14 " {
		t.Errorf("with the service down: status %d body %q", resp.StatusCode, body)
	}
	if app.hits.Load() != 2 {
		t.Errorf("app hits %d, want 2", app.hits.Load())
	}
}
