// Command controlplane is the xDS sample's control plane: a small
// go-control-plane server that gives sluice (over ADS, state of the world or
// delta) a listener, its route table by RDS, an EDS cluster, a Lua filter in
// the listener's connection manager and a Wasm filter by ECDS — and pushes a
// new version of them whenever it is asked to:
//
//	controlplane -upstream 127.0.0.1:9107 [-xds 127.0.0.1:18000] [-http 127.0.0.1:18001]
//	curl -X POST '127.0.0.1:18001/push?greeting=bonjour&wasm=v2'
//
// It prints "ready" on stdout once both ports listen.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmrtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// state is what a push changes.
type state struct {
	version  int
	greeting string // the Lua filter's x-greeting response header
	wasm     string // the Wasm filter's plugin configuration (its x-wasm header)
}

func main() {
	xdsAddr := flag.String("xds", "127.0.0.1:18000", "xDS (ADS) gRPC address")
	httpAddr := flag.String("http", "127.0.0.1:18001", "address of the push endpoint")
	listen := flag.String("listen", "127.0.0.1:10000", "address of the listener pushed to sluice")
	upstream := flag.String("upstream", "127.0.0.1:9107", "the app's address (the EDS endpoint)")
	wasmFile := flag.String("wasm", "samples/wasm/header/header.wasm", "the proxy-wasm module the ECDS filter runs (made absolute)")
	node := flag.String("node", "sluice-sample", "node id of the proxy served")
	flag.Parse()
	wasmPath, err := filepath.Abs(*wasmFile)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := os.Stat(wasmPath); err != nil {
		log.Fatalf("controlplane: -wasm: %v", err)
	}

	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	cp := &controlPlane{cache: snapshots, node: *node, listen: *listen, upstream: *upstream, wasm: wasmPath,
		st: state{version: 1, greeting: "hello", wasm: "xds-v1"}}
	if err := cp.publish(); err != nil {
		log.Fatal(err)
	}

	lis, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, server.NewServer(context.Background(), snapshots, nil))
	go func() { log.Fatal(gs.Serve(lis)) }()

	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /push", cp.handlePush)
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		st := cp.current()
		fmt.Fprintf(w, "version %d greeting %q wasm %q\n", st.version, st.greeting, st.wasm)
	})
	fmt.Println("ready")
	log.Fatal(http.Serve(hl, mux))
}

type controlPlane struct {
	cache                  cache.SnapshotCache
	node, listen, upstream string
	wasm                   string

	mu sync.Mutex
	st state
}

func (cp *controlPlane) current() state {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.st
}

// handlePush makes a new version: ?greeting= changes the Lua filter,
// ?wasm= the Wasm filter's configuration.
func (cp *controlPlane) handlePush(w http.ResponseWriter, r *http.Request) {
	cp.mu.Lock()
	if g := r.URL.Query().Get("greeting"); g != "" {
		cp.st.greeting = g
	}
	if v := r.URL.Query().Get("wasm"); v != "" {
		cp.st.wasm = v
	}
	cp.st.version++
	cp.mu.Unlock()
	if err := cp.publish(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	st := cp.current()
	fmt.Fprintf(w, "pushed version %d\n", st.version)
	log.Printf("pushed version %d: greeting %q, wasm %q", st.version, st.greeting, st.wasm)
}

func (cp *controlPlane) publish() error {
	st := cp.current()
	snap, err := cache.NewSnapshot(strconv.Itoa(st.version), map[resource.Type][]types.Resource{
		resource.ListenerType:        {cp.listener(st)},
		resource.RouteType:           {cp.routes()},
		resource.ClusterType:         {cp.cluster()},
		resource.EndpointType:        {cp.endpoints()},
		resource.ExtensionConfigType: {cp.wasmFilter(st)},
	})
	if err != nil {
		return err
	}
	if err := snap.Consistent(); err != nil {
		return err
	}
	return cp.cache.SetSnapshot(context.Background(), cp.node, snap)
}

// ads is the config source of every dynamic resource: the ADS stream the
// proxy opened.
var ads = &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
	ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}

const luaScript = `function envoy_on_response(handle)
  handle:headers():add("x-greeting", %q)
end
`

// listener: one HTTP listener whose routes come by RDS, with a Lua filter
// inline and a Wasm filter by ECDS in front of the router.
func (cp *controlPlane) listener(st state) *listenerv3.Listener {
	host, port, _ := net.SplitHostPort(cp.listen)
	p, _ := strconv.Atoi(port)
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "ingress",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: "local_routes", ConfigSource: ads}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&luav3.Lua{
				DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
					InlineString: fmt.Sprintf(luaScript, st.greeting)}}})}},
			{Name: "sample-wasm", ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
				ConfigSource: ads, TypeUrls: []string{"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"}}}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}},
		},
	}
	return &listenerv3.Listener{
		Name: "ingress",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}}}},
	}
}

func (cp *controlPlane) routes() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: "local_routes", VirtualHosts: []*routev3.VirtualHost{{
		Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "app"}}},
		}},
	}}}
}

func (cp *controlPlane) cluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 "app",
		ConnectTimeout:       durationpb.New(durationSecond),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
	}
}

func (cp *controlPlane) endpoints() *endpointv3.ClusterLoadAssignment {
	host, port, _ := net.SplitHostPort(cp.upstream)
	p, _ := strconv.Atoi(port)
	return &endpointv3.ClusterLoadAssignment{ClusterName: "app", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}},
	}}}
}

// wasmFilter is the ECDS resource behind the listener's "sample-wasm"
// filter: samples/wasm/header's module, configured with st.wasm.
func (cp *controlPlane) wasmFilter(st state) *corev3.TypedExtensionConfig {
	cfg := mustAny(wrapperspb.String(st.wasm))
	return &corev3.TypedExtensionConfig{Name: "sample-wasm", TypedConfig: mustAny(&wasmv3.Wasm{Config: &wasmrtv3.PluginConfig{
		Name: "sample-wasm", Configuration: cfg,
		Vm: &wasmrtv3.PluginConfig_VmConfig{VmConfig: &wasmrtv3.VmConfig{
			Runtime: "envoy.wasm.runtime.v8",
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{Local: &corev3.DataSource{
				Specifier: &corev3.DataSource_Filename{Filename: cp.wasm}}}},
		}},
	}})}
}

const durationSecond = 1e9

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}
