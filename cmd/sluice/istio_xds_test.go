package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sluice-proxy/sluice/xds"
)

// shortTempDir is a temporary directory with a short path: a unix
// socket's path is limited to 107 bytes, more than t.TempDir() may give.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serveUnix serves h (HTTP/1.1) on a unix socket until the test ends.
func serveUnix(t *testing.T, path string, h http.HandlerFunc) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// Clusters reach endpoints on unix sockets (Envoy's pipe addresses, as
// Istio's sds-grpc and xds-grpc clusters have): a gRPC server over
// HTTP/2 on a socket file, an HTTP/1.1 server on a socket file given by a
// relative path, and (on Linux) one in the abstract namespace.
func TestIstioPipeEndpoints(t *testing.T) {
	dir := shortTempDir(t)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	gln, err := net.Listen("unix", filepath.Join(dir, "grpc.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)
	serveUnix(t, filepath.Join(dir, "h1.sock"), func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "file socket") })
	abstract := ""
	if runtime.GOOS == "linux" {
		abstract = fmt.Sprintf("@sluice-test-%d-%d", os.Getpid(), time.Now().UnixNano())
		serveUnix(t, abstract, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "abstract socket") })
	}
	// A relative pipe path is relative to the working directory, as in
	// Envoy: the test's is the package directory, so the path climbs out.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, filepath.Join(dir, "h1.sock"))
	if err != nil {
		t.Fatal(err)
	}
	pipeCluster := func(name, path, protocol string) string {
		return fmt.Sprintf(`
  - name: %s
    type: STATIC
    connect_timeout: 1s%[2]s
    load_assignment:
      cluster_name: %[1]s
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: %[3]q } } } }] }]`, name, protocol, path)
	}
	h2 := `
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }`
	clusters := pipeCluster("grpc", filepath.Join(dir, "grpc.sock"), h2) + pipeCluster("file", "./"+rel, "")
	routes := `
              - { match: { prefix: /grpc.health.v1.Health/ }, route: { cluster: grpc } }
              - { match: { prefix: /file }, route: { cluster: file } }`
	if abstract != "" {
		clusters += pipeCluster("abstract", abstract, "")
		routes += `
              - { match: { prefix: /abstract }, route: { cluster: abstract } }`
	}
	doc := fmt.Sprintf(`
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          http_filters:
          - { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:%s
  clusters:%s
`, routes, clusters)
	snap, err := xds.LoadBootstrap([]byte(doc), "pipes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range snap.Clusters {
		if !strings.HasPrefix(c.Endpoints[0].Address, "unix:") {
			t.Fatalf("cluster %s: endpoint %q", c.Name, c.Endpoints[0].Address)
		}
	}
	srv := startServer(t, snap)
	addr := srv.ListenerAddr("main").String()

	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("gRPC health check through a pipe cluster: %v %v", resp, err)
		}
	}
	paths := map[string]string{"/file": "file socket"}
	if abstract != "" {
		paths["/abstract"] = "abstract socket"
	}
	for path, want := range paths {
		for i := 0; i < 3; i++ { // new and pooled connections
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("GET %s: %d %q, want 200 %q", path, resp.StatusCode, body, want)
			}
		}
	}
}
