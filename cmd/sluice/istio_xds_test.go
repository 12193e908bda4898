package main

import (
	"bytes"
	"context"
	ctls "crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
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

// The bookinfo resources of xds/testdata/istio/bookinfo.yaml, filled in.
type bookinfoVars struct {
	VIP                    string // the reviews service's cluster IP
	Outbound, Inbound, App int
	WeightV1, WeightV3     int
	Subsets                []bookinfoSubset
}

type bookinfoSubset struct {
	Name      string // "" for the service's own cluster
	Endpoints []bookinfoEndpoint
}

type bookinfoEndpoint struct {
	Port              int
	MTLS              bool
	Workload, Version string
}

// bookinfoResources renders the template into xDS resources, in the
// control plane snapshot's shape. istio.alpn is sent as istiod sends it:
// its serialized FilterConfig in an Any.
func bookinfoResources(t *testing.T, v bookinfoVars) map[resourcev3.Type][]types.Resource {
	t.Helper()
	tmpl, err := template.ParseFiles("../../xds/testdata/istio/bookinfo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc bytes.Buffer
	if err := tmpl.Execute(&doc, v); err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(doc.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var lists map[string][]json.RawMessage
	if err := json.Unmarshal(js, &lists); err != nil {
		t.Fatal(err)
	}
	out := map[resourcev3.Type][]types.Resource{}
	decode := func(key string, typ resourcev3.Type, mk func() proto.Message) {
		for i, raw := range lists[key] {
			m := mk()
			if err := protojson.Unmarshal(raw, m); err != nil {
				t.Fatalf("bookinfo.yaml: %s[%d]: %v", key, i, err)
			}
			out[typ] = append(out[typ], m)
		}
	}
	decode("listeners", resourcev3.ListenerType, func() proto.Message { return &listenerv3.Listener{} })
	decode("clusters", resourcev3.ClusterType, func() proto.Message { return &clusterv3.Cluster{} })
	decode("routes", resourcev3.RouteType, func() proto.Message { return &routev3.RouteConfiguration{} })
	decode("endpoints", resourcev3.EndpointType, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} })
	for _, r := range out[resourcev3.ListenerType] {
		for _, fc := range r.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetTypedConfig().MessageName() != "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" {
					continue
				}
				m := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
					t.Fatal(err)
				}
				for _, hf := range m.GetHttpFilters() {
					if hf.GetName() == "istio.alpn" {
						hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: istioALPNAny()}
					}
				}
				a, err := anypb.New(m)
				if err != nil {
					t.Fatal(err)
				}
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
			}
		}
	}
	return out
}

// istioALPNAny is Istio's istio.alpn config as istiod sends it:
// istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig, serialized.
func istioALPNAny() *anypb.Any {
	var b []byte
	for proto, list := range [][]string{{"istio-http/1.0", "istio", "http/1.0"}, {"istio-http/1.1", "istio", "http/1.1"}, {"istio-h2", "istio", "h2"}} {
		var o []byte
		if proto != 0 {
			o = protowire.AppendTag(o, 1, protowire.VarintType)
			o = protowire.AppendVarint(o, uint64(proto))
		}
		for _, s := range list {
			o = protowire.AppendTag(o, 2, protowire.BytesType)
			o = protowire.AppendString(o, s)
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, o)
	}
	return &anypb.Any{TypeUrl: config.TypeIstioALPN, Value: b}
}

// serveGRPC serves a go-control-plane server (ADS, or SDS alone) from
// cache on a unix socket until the test ends; cb (nil: none) sees the
// proxy's requests.
func serveGRPC(t *testing.T, path string, cache cachev3.SnapshotCache, sds bool, cb serverv3.Callbacks) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	srv := serverv3.NewServer(ctx, cache, cb)
	if sds {
		secretv3.RegisterSecretDiscoveryServiceServer(gs, srv)
	} else {
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		cancel()
		<-done
	})
}

func setSnapshot(t *testing.T, cache cachev3.SnapshotCache, node, version string, res map[resourcev3.Type][]types.Resource) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}
}

// reviewsBackend is one reviews pod: it answers its name, and what the
// sidecar in front of it sent.
func reviewsBackend(t *testing.T, name string, status int) (port int, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		w.Header().Set("X-Seen-From", host)
		w.Header().Set("X-Seen-XFCC", r.Header.Get("X-Forwarded-Client-Cert"))
		w.Header().Set("X-Seen-Peer", r.Header.Get("X-Envoy-Peer-Metadata-Id"))
		w.WriteHeader(status)
		io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, hits
}

const bookinfoNode = "sidecar~10.244.0.12~productpage-v1-7d4c9f7b8d-x2kq9.default~default.svc.cluster.local"

// TestIstioXDSEndToEnd runs Sluice as Istio runs Envoy: with Istio's
// bootstrap (xds/testdata/istio/envoy-rev.json: ADS and SDS over unix
// sockets, admin, the prometheus and health listeners) and pilot-agent's
// command line, fed by an in-process delta ADS server with the bookinfo
// sidecar resources of xds/testdata/istio/bookinfo.yaml, and by an SDS
// server standing in for pilot-agent's with the workload certificate.
// Traffic follows Istio's paths: outbound connections to 15001 are handed
// to the 0.0.0.0_9080 listener by their original destination (a test hook
// stands in for the iptables redirect), routed by header and weight to
// EDS subsets; the v2 subset is reached over mTLS with Istio's ALPN
// through the inbound listener (15006), which serves it from its local
// app. Then a weight change is pushed under load.
func TestIstioXDSEndToEnd(t *testing.T) {
	dir := shortTempDir(t)
	ca := tlstest.NewCA(t, "cluster.local")
	leaf := ca.Issue(t, "reviews.default.svc.cluster.local", "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")

	// Workloads: reviews v1 (two pods, one failing), v2 behind this
	// sidecar's inbound listener, v3; a TCP echo server outside the mesh.
	v1, v1Hits := reviewsBackend(t, "reviews-v1", 200)
	v1bad, v1badHits := reviewsBackend(t, "reviews-v1-bad", 503)
	v3, _ := reviewsBackend(t, "reviews-v3", 200)
	app, appHits := reviewsBackend(t, "reviews-v2", 200)
	echo := tcpOrigin(t, echoConn("echo:"))
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz/ready" {
			io.WriteString(w, "agent ready")
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(agent.Close)

	outbound, inbound := freePort(t), freePort(t)
	// The reviews service's address is on loopback, where nothing
	// listens on 9080: a connection not handed to the 0.0.0.0_9080
	// listener would be refused, never leave the machine.
	reviewsVIP := netip.MustParseAddrPort("127.255.0.10:9080")
	vars := bookinfoVars{VIP: reviewsVIP.Addr().String(), Outbound: outbound, Inbound: inbound, App: app, WeightV1: 50, WeightV3: 50}
	eps := map[string][]bookinfoEndpoint{
		"v1": {{Port: v1, Workload: "reviews-v1", Version: "v1"}, {Port: v1bad, Workload: "reviews-v1", Version: "v1"}},
		"v2": {{Port: inbound, MTLS: true, Workload: "reviews-v2", Version: "v2"}},
		"v3": {{Port: v3, Workload: "reviews-v3", Version: "v3"}},
	}
	vars.Subsets = []bookinfoSubset{{Name: "", Endpoints: append(append(slices.Clone(eps["v1"]), eps["v2"]...), eps["v3"]...)}}
	for _, s := range []string{"v1", "v2", "v3"} {
		vars.Subsets = append(vars.Subsets, bookinfoSubset{Name: s, Endpoints: eps[s]})
	}

	ads := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, ads, bookinfoNode, "1", bookinfoResources(t, vars))
	serveGRPC(t, filepath.Join(dir, "xds.sock"), ads, false, nil)
	sds := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	setSnapshot(t, sds, bookinfoNode, "1", workloadSecrets(leaf, ca))
	serveGRPC(t, filepath.Join(dir, "sds.sock"), sds, true, nil)

	// The redirect iptables would do: connections to 15001 from
	// 127.0.0.2 were for the reviews service, from 127.0.0.3 for the echo
	// server; those to 15006 for reviews-v2's pod.
	echoAddr := netip.MustParseAddrPort(echo)
	restore := server.SetOriginalDstLookup(func(c net.Conn) (netip.AddrPort, error) {
		local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		switch {
		case local.Port == outbound && remote.IP.Equal(net.IPv4(127, 0, 0, 2)):
			return reviewsVIP, nil
		case local.Port == outbound && remote.IP.Equal(net.IPv4(127, 0, 0, 3)):
			return echoAddr, nil
		case local.Port == inbound:
			return netip.MustParseAddrPort("10.244.0.20:9080"), nil
		}
		return local.AddrPort(), nil
	})
	t.Cleanup(restore)

	// Istio's bootstrap, with this test's sockets and ports.
	admin, prom, health := freePort(t), freePort(t), freePort(t)
	_, agentPort, _ := net.SplitHostPort(agent.Listener.Addr().String())
	agentPortN, _ := strconv.Atoi(agentPort)
	adminURL, stderr, _ := runIstioSidecar(t, "../../xds/testdata/istio/envoy-rev.json", dir, admin, agentPortN, prom, health, "info")

	from := func(src string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", outbound))
			},
			MaxIdleConnsPerHost: 8,
		}}
	}
	mesh := from("127.0.0.2")
	get := func(c *http.Client, url string, hdr map[string]string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body), resp.Header
	}

	// Ready once the control plane's listeners, clusters and secrets
	// are applied and the v2 subset answers through mTLS.
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://reviews:9080/reviews/0", nil)
		req.Header.Set("End-User", "jason")
		// A new connection each time: one accepted before the
		// 0.0.0.0_9080 listener arrived went to the catch-all chain.
		req.Close = true
		resp, err := mesh.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && string(body) == "reviews-v2" {
				break
			}
		}
		if time.Now().After(deadline) {
			r, _ := http.Get(adminURL + "/config_dump")
			var dump []byte
			if r != nil {
				dump, _ = io.ReadAll(r.Body)
				r.Body.Close()
			}
			if i := bytes.Index(dump, []byte("dynamic")); i > 0 {
				dump = dump[i:]
			}
			st, _ := http.Get(adminURL + "/stats")
			var stats []byte
			if st != nil {
				stats, _ = io.ReadAll(st.Body)
				st.Body.Close()
			}
			t.Fatalf("the mesh route never answered: %v %v\nlog: %s\nstats: %s", err, resp, stderr.String(), stats)
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Run("header route to v2 over mTLS", func(t *testing.T) {
		before := v1Hits.Load() + v1badHits.Load()
		for i := 0; i < 20; i++ {
			code, body, h := get(mesh, "http://reviews:9080/reviews/1", map[string]string{"End-User": "jason"})
			if code != 200 || body != "reviews-v2" {
				t.Fatalf("jason: %d %q, want 200 reviews-v2", code, body)
			}
			// What the app behind the inbound listener saw: the
			// client certificate's details, no metadata exchange
			// headers (the inbound filter took them), a connection
			// from 127.0.0.6 (upstream_bind_config).
			if x := h.Get("X-Seen-XFCC"); !strings.Contains(x, "URI=spiffe://cluster.local/ns/default/sa/bookinfo-reviews") || !strings.HasPrefix(x, "Hash=") {
				t.Fatalf("x-forwarded-client-cert at the app: %q", x)
			}
			if p := h.Get("X-Seen-Peer"); p != "" {
				t.Fatalf("the app saw x-envoy-peer-metadata-id %q", p)
			}
			if f := h.Get("X-Seen-From"); f != "127.0.0.6" {
				t.Fatalf("the app saw a connection from %s, want 127.0.0.6", f)
			}
			// The response's metadata exchange headers were taken by the
			// outbound filter.
			if h.Get("X-Envoy-Peer-Metadata") != "" {
				t.Fatal("x-envoy-peer-metadata reached the client")
			}
		}
		if n := v1Hits.Load() + v1badHits.Load() - before; n != 0 {
			t.Fatalf("%d of jason's requests reached v1", n)
		}
	})

	t.Run("h2c to v2 over mTLS", func(t *testing.T) {
		// The downstream protocol carries on upstream
		// (use_downstream_protocol_config): HTTP/2 with Istio's h2 ALPN
		// to the inbound listener, HTTP/1.1 from there to the app.
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, _, _ string, _ *ctls.Config) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", outbound))
			}}}
		for i := 0; i < 5; i++ {
			code, body, _ := get(c, "http://reviews:9080/reviews/h2", map[string]string{"End-User": "jason"})
			if code != 200 || body != "reviews-v2" {
				t.Fatalf("h2c jason: %d %q", code, body)
			}
		}
	})

	t.Run("weighted v1 and v3, retried off a failing host", func(t *testing.T) {
		seen := map[string]int{}
		for i := 0; i < 60; i++ {
			code, body, _ := get(mesh, "http://reviews.default.svc.cluster.local:9080/reviews/2", nil)
			if code != 200 || (body != "reviews-v1" && body != "reviews-v3") {
				t.Fatalf("request %d: %d %q, want 200 from v1 or v3", i, code, body)
			}
			seen[body]++
		}
		if seen["reviews-v1"] == 0 || seen["reviews-v3"] == 0 {
			t.Fatalf("saw %v, want both v1 and v3", seen)
		}
		for i := 0; i < 20; i++ {
			if code, body, _ := get(mesh, "http://reviews:9080/retry", nil); code != 200 || body != "reviews-v1" {
				t.Fatalf("/retry: %d %q, want 200 reviews-v1 (retried on another host)", code, body)
			}
		}
		if v1badHits.Load() == 0 {
			t.Fatal("the failing v1 host was never tried: the retry went untested")
		}
	})

	t.Run("route timeout", func(t *testing.T) {
		if code, body, _ := get(mesh, "http://reviews:9080/slow", nil); code != 504 {
			t.Fatalf("/slow: %d %q, want 504", code, body)
		}
	})

	t.Run("passthrough", func(t *testing.T) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", outbound))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := roundTrip(t, c, []byte("hello")); string(got) != "echo:hello" {
			t.Fatalf("through PassthroughCluster: %q", got)
		}
	})

	t.Run("inbound plaintext", func(t *testing.T) {
		before := appHits.Load()
		c := &http.Client{Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/reviews/3", inbound), nil)
		req.Header.Set("X-Forwarded-Client-Cert", "By=spoofed")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "reviews-v2" || appHits.Load() != before+1 {
			t.Fatalf("inbound: %d %q", resp.StatusCode, body)
		}
		if x := resp.Header.Get("X-Seen-XFCC"); x != "" {
			t.Fatalf("a plaintext request's x-forwarded-client-cert reached the app: %q", x)
		}
	})

	t.Run("inbound TCP with the metadata exchange", func(t *testing.T) {
		cert := leaf.TLSCertificate(t)
		conn, err := ctls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", inbound), &ctls.Config{
			Certificates: []ctls.Certificate{cert}, RootCAs: ca.Pool(), ServerName: "reviews.default.svc.cluster.local",
			NextProtos: []string{"istio-peer-exchange", "istio"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if p := conn.ConnectionState().NegotiatedProtocol; p != "istio-peer-exchange" {
			t.Fatalf("negotiated %q", p)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		// A peer sidecar's exchange, then the application's bytes.
		hello := mxHello(t, map[string]any{"WORKLOAD_NAME": "ratings-v1", "NAMESPACE": "default"}, "sidecar~10.244.0.30~ratings")
		if _, err := conn.Write(append(hello, "GET /reviews/4 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"...)); err != nil {
			t.Fatal(err)
		}
		all, _ := io.ReadAll(conn)
		if len(all) < 8 || binary.BigEndian.Uint32(all) != 0x3D230467 {
			t.Fatalf("no metadata exchange from Sluice: %q", all)
		}
		n := int(binary.BigEndian.Uint32(all[4:]))
		if len(all) < 8+n {
			t.Fatalf("short exchange: %q", all)
		}
		rest := string(all[8+n:])
		if !strings.HasPrefix(rest, "HTTP/1.1 200 ") || !strings.HasSuffix(rest, "reviews-v2") {
			t.Fatalf("the app's answer after the exchange: %q", rest)
		}
	})

	t.Run("health and prometheus listeners", func(t *testing.T) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", health))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "agent ready" {
			t.Fatalf("15021: %d %q", resp.StatusCode, body)
		}
		wants := []string{
			// The client side of jason's requests, and the server side
			// (the same proxy: the peer it found is itself).
			`istio_requests_total{reporter="source",source_workload="productpage-v1",source_canonical_service="productpage",source_canonical_revision="v1",source_workload_namespace="default",source_principal="unknown",source_app="productpage",source_version="v1",source_cluster="Kubernetes",destination_workload="productpage-v1",destination_workload_namespace="default",destination_principal="unknown",destination_app="productpage",destination_version="v1",destination_service="reviews.default.svc.cluster.local",destination_canonical_service="productpage",destination_canonical_revision="v1",destination_service_name="reviews",destination_service_namespace="default",destination_cluster="Kubernetes",request_protocol="http",response_code="200",grpc_response_status="",response_flags="-",connection_security_policy="unknown"}`,
			`istio_requests_total{reporter="destination",source_workload="productpage-v1",`,
			`source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews"`,
			`connection_security_policy="mutual_tls"}`,
			`response_code="504"`,
			`istio_request_duration_milliseconds_bucket{reporter="source",`,
		}
		// A request is counted when its stream ends, which for the one
		// that timed out may come after its 504 was read: look again for
		// a while.
		var text string
		for range 200 {
			resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", prom))
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			text = string(body)
			if !slices.ContainsFunc(wants, func(w string) bool { return !strings.Contains(text, w) }) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, want := range wants {
			if !strings.Contains(text, want) {
				t.Errorf("/stats/prometheus lacks %s", want)
			}
		}
		if t.Failed() {
			for _, l := range strings.Split(text, "\n") {
				if strings.HasPrefix(l, "istio_requests_total") {
					t.Log(l)
				}
			}
		}
	})

	t.Run("live weight change under load", func(t *testing.T) {
		var failed atomic.Value
		var v3only atomic.Bool
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var after atomic.Int64 // requests after v3 was seen alone
		var total atomic.Int64
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := from("127.0.0.2")
				for i := 0; i < 2000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					// Sent after the update was seen: must reach v3.
					late := v3only.Load()
					resp, err := c.Get("http://reviews:9080/reviews/5")
					if err != nil {
						failed.Store(err.Error())
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					total.Add(1)
					if resp.StatusCode != 200 || (string(body) != "reviews-v1" && string(body) != "reviews-v3") {
						failed.Store(fmt.Sprintf("%d %q", resp.StatusCode, body))
						return
					}
					if late {
						if string(body) != "reviews-v3" {
							failed.Store("v1 answered after the update was seen")
							return
						}
						after.Add(1)
					}
				}
			}()
		}
		// The update goes out under load.
		for i := 0; i < 2000 && total.Load() < 40 && failed.Load() == nil; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if total.Load() < 40 {
			t.Fatalf("no load before the update: %d requests, %v", total.Load(), failed.Load())
		}
		vars.WeightV1, vars.WeightV3 = 0, 100
		setSnapshot(t, ads, bookinfoNode, "2", bookinfoResources(t, vars))
		// The update is applied when a fresh connection sees v3 only.
		deadline := time.Now().Add(20 * time.Second)
		for streak := 0; streak < 20; {
			if time.Now().After(deadline) {
				t.Fatal("the weight change was not applied")
			}
			_, body, _ := get(from("127.0.0.2"), "http://reviews:9080/reviews/6", nil)
			if body == "reviews-v3" {
				streak++
			} else {
				streak = 0
			}
		}
		v3only.Store(true)
		for i := 0; i < 400 && after.Load() < 100 && failed.Load() == nil; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		if f := failed.Load(); f != nil {
			t.Fatalf("a request failed during the update: %v", f)
		}
		t.Logf("%d requests under load, %d after v3 alone was seen", total.Load(), after.Load())
	})
}

// mxHello is an Istio TCP metadata exchange message from a peer.
func mxHello(t *testing.T, md map[string]any, id string) []byte {
	t.Helper()
	st, err := structpb.NewStruct(map[string]any{"x-envoy-peer-metadata": md, "x-envoy-peer-metadata-id": id})
	if err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(st)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.BigEndian.AppendUint32(nil, 0x3D230467)
	out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
	return append(out, b...)
}

// runIstioSidecar runs Sluice as pilot-agent runs Envoy: Istio's bootstrap
// at bootPath with this test's sockets (dir/xds.sock, dir/sds.sock) and
// ports (admin, pilot-agent's 15020 at agent, 15090 at prom, 15021 at
// health; 0.0.0.0 made 127.0.0.1), and pilot-agent's command line. It
// returns the admin URL, the log, and a channel closed if the proxy exits;
// the proxy quits when the test ends.
func runIstioSidecar(t *testing.T, bootPath, dir string, admin, agent, prom, health int, level string) (string, *syncBuffer, <-chan struct{}) {
	t.Helper()
	boot, err := os.ReadFile(bootPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(boot)
	for _, r := range [][2]string{
		{`"./var/run/secrets/workload-spiffe-uds/socket"`, strconv.Quote(filepath.Join(dir, "sds.sock"))},
		{`"./etc/istio/proxy/XDS"`, strconv.Quote(filepath.Join(dir, "xds.sock"))},
		{`"port_value": 15000`, fmt.Sprintf(`"port_value": %d`, admin)},
		{`"port_value": 15020`, fmt.Sprintf(`"port_value": %d`, agent)},
		{`"port_value": 15090`, fmt.Sprintf(`"port_value": %d`, prom)},
		{`"port_value": 15021`, fmt.Sprintf(`"port_value": %d`, health)},
		{`"address": "0.0.0.0"`, `"address": "127.0.0.1"`},
	} {
		if !strings.Contains(doc, r[0]) {
			t.Fatalf("%s has no %s", bootPath, r[0])
		}
		doc = strings.ReplaceAll(doc, r[0], r[1])
	}
	cfg := filepath.Join(dir, "envoy-rev.json")
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", cfg, "--drain-time-s", "1", "--drain-strategy", "immediate", "--local-address-ip-version", "v4",
		"--file-flush-interval-msec", "1000", "--disable-hot-restart", "--allow-unknown-static-fields",
		"-l", level, "--component-log-level", "misc:error", "--concurrency", "2"}
	stderr := new(syncBuffer)
	done := make(chan struct{})
	go func() {
		code := runMain(args, io.Discard, stderr)
		fmt.Fprintf(stderr, "sluice exited with %d\n", code)
		close(done)
	}()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	t.Cleanup(func() {
		http.Post(adminURL+"/quitquitquit", "", nil)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("sluice did not quit")
		}
		if t.Failed() {
			t.Logf("sluice's log:\n%s", stderr.String())
		}
	})
	return adminURL, stderr, done
}

// workloadSecrets are what pilot-agent's SDS server serves a proxy: its
// workload certificate ("default") and the mesh's roots ("ROOTCA").
func workloadSecrets(leaf *tlstest.Leaf, ca *tlstest.CA) map[resourcev3.Type][]types.Resource {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	return map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {
		&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(leaf.CertPEM), PrivateKey: inline(leaf.KeyPEM)}}},
		&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(ca.CertPEM)}}},
	}}
}

// rewriteEndpoints points every endpoint of res (pod IPs, 10.x) at
// 127.0.0.1: the port podPorts gives its pod, or nowhere.
func rewriteEndpoints(t *testing.T, res map[resourcev3.Type][]types.Resource, podPorts map[string]int, nowhere int) {
	t.Helper()
	rewritten := 0
	for _, r := range res[resourcev3.EndpointType] {
		for _, le := range r.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			for _, e := range le.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				if sa == nil || !strings.HasPrefix(sa.GetAddress(), "10.") {
					t.Fatalf("endpoint %v: want a pod IP", e)
				}
				port, ok := podPorts[sa.GetAddress()]
				if !ok {
					port = nowhere
				}
				sa.Address, sa.PortSpecifier = "127.0.0.1", &corev3.SocketAddress_PortValue{PortValue: uint32(port)}
				rewritten++
			}
		}
	}
	if rewritten == 0 {
		t.Fatal("no endpoints")
	}
}
