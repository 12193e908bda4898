package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// xdsResources is one version of what the test control plane serves: a
// listener with routes by RDS and an inline Lua filter that stamps the
// version on responses, and an EDS cluster.
func xdsResources(t *testing.T, listen int, upstream string, version int, badRoute bool) map[resource.Type][]types.Resource {
	t.Helper()
	return xdsResourcesWith(t, listen, upstream, version, badRoute, 0)
}

// xdsResourcesWith adds, when brokenPort is set, a second listener "broken"
// on that port whose Lua script does not compile: the engine refuses it.
func xdsResourcesWith(t *testing.T, listen int, upstream string, version int, badRoute bool, brokenPort int) map[resource.Type][]types.Resource {
	t.Helper()
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	script := fmt.Sprintf("function envoy_on_response(h) h:headers():add(\"x-version\", \"%d\") end\n", version)
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "dyn",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "r", ConfigSource: ads}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&luav3.Lua{
				DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: script}}})}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&routerv3.Router{})}},
		},
	}
	l := &listenerv3.Listener{
		Name: "dyn",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(listen)}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(hcm)}}}}},
	}
	match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if badRoute {
		match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(unclosed"}}}
	}
	rc := &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "all", Domains: []string{"*"},
		Routes: []*routev3.Route{{Match: match, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "app"}}}}}}}}
	c := &clusterv3.Cluster{Name: "app", ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}}
	host, port, _ := net.SplitHostPort(upstream)
	p, _ := strconv.Atoi(port)
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "app", Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}}}}}
	listeners := []types.Resource{l}
	if brokenPort != 0 {
		bhcm := proto.Clone(hcm).(*hcmv3.HttpConnectionManager)
		bhcm.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&luav3.Lua{
			DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "function envoy_on_request(h) h:headers(:add end\n"}}})}
		bl := proto.Clone(l).(*listenerv3.Listener)
		bl.Name = "broken"
		bl.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(brokenPort)}
		bl.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(bhcm)}
		listeners = append(listeners, bl)
	}
	return map[resource.Type][]types.Resource{resource.ListenerType: listeners, resource.RouteType: {rc},
		resource.ClusterType: {c}, resource.EndpointType: {cla}}
}

// Sluice fed by a go-control-plane ADS server (both protocol variants),
// end to end through the running proxy: the initial config serves, 100
// updates under a bounded load loop lose no request, a bad route is
// NACKed (counted, and the old config keeps serving), and a fixed one is
// taken.
func TestXDSUpdatesUnderLoad(t *testing.T) {
	for _, apiType := range []string{"GRPC", "DELTA_GRPC"} {
		t.Run(apiType, func(t *testing.T) {
			app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app\n") })
			cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer()
			discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(context.Background(), cache, nil))
			go gs.Serve(lis)
			t.Cleanup(gs.Stop)

			listen, admin := freePort(t), freePort(t)
			brokenPort := 0
			push := func(version, stamp int, bad bool) {
				t.Helper()
				snap, err := cachev3.NewSnapshot(strconv.Itoa(version), xdsResourcesWith(t, listen, app.addr(), stamp, bad, brokenPort))
				if err != nil {
					t.Fatal(err)
				}
				if err := cache.SetSnapshot(context.Background(), "e2e", snap); err != nil {
					t.Fatal(err)
				}
			}
			push(1, 1, false)

			_, xdsPort, _ := net.SplitHostPort(lis.Addr().String())
			boot := strings.NewReplacer("port_value: 18000", "port_value: "+xdsPort, "port_value: 9901", fmt.Sprintf("port_value: %d", admin),
				"id: sluice-sample", "id: e2e", "DELTA_GRPC", apiType)
			b, err := os.ReadFile("../../samples/xds/bootstrap.yaml")
			if err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(t.TempDir(), "bootstrap.yaml")
			if err := os.WriteFile(cfg, []byte(boot.Replace(string(b))), 0o644); err != nil {
				t.Fatal(err)
			}
			var stderr syncBuffer
			done := make(chan int, 1)
			go func() { done <- runMain([]string{"run", "-c", cfg, "--log-level", "warn"}, io.Discard, &stderr) }()
			adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
			t.Cleanup(func() {
				http.Post(adminURL+"/quitquitquit", "", nil)
				select {
				case <-done:
				case <-time.After(20 * time.Second):
					t.Error("sluice did not quit")
				}
			})

			url := fmt.Sprintf("http://127.0.0.1:%d/", listen)
			client := &http.Client{Timeout: 5 * time.Second}
			version := func() string {
				resp, err := client.Get(url)
				if err != nil {
					return err.Error()
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || string(body) != "app\n" {
					return fmt.Sprintf("status %d body %q", resp.StatusCode, body)
				}
				return resp.Header.Get("x-version")
			}
			waitVersion := func(want int) {
				t.Helper()
				deadline := time.Now().Add(15 * time.Second)
				got := ""
				for time.Now().Before(deadline) {
					if got = version(); got == strconv.Itoa(want) {
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
				t.Fatalf("version %d not served: last %q\nsluice: %s", want, got, stderr.String())
			}
			waitVersion(1)

			load := startLoad(url, 4, 100000, func(body string) bool { return body == "app\n" })
			const updates = 100
			for v := 2; v <= 1+updates; v++ {
				push(v, v, false)
				waitVersion(v) // each update is applied, not coalesced with the next
			}
			load.finish(t)
			t.Logf("%d updates applied under load: %d requests, 0 failed", updates, load.ok.Load())

			// A bad route table (the listener unchanged) is NACKed: counted,
			// and the previous table serves on.
			push(2+updates, 1+updates, true)
			deadline := time.Now().Add(15 * time.Second)
			// (A state-of-the-world server resends the rejected version, so
			// the count may pass 1.)
			for strings.Contains(statsGet(t, adminURL+"/stats?filter=rds.update_rejected"), "xds.rds.update_rejected: 0") {
				if time.Now().After(deadline) {
					t.Fatalf("bad route not rejected: %s\nsluice: %s", statsGet(t, adminURL+"/stats?filter=update"), stderr.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if v := version(); v != strconv.Itoa(1+updates) {
				t.Fatalf("after the NACK: %q, want the previous version %d", v, 1+updates)
			}
			push(3+updates, 3+updates, false)
			waitVersion(3 + updates)

			// A partly bad update: "dyn" changes (its script stamps a new
			// version) and a new listener's Lua script does not compile.
			// As Envoy, the good listener is applied and the bad one is
			// left out, and the update is NACKed.
			brokenPort = freePort(t)
			push(4+updates, 4+updates, false)
			waitVersion(4 + updates)
			deadline = time.Now().Add(15 * time.Second)
			for strings.Contains(statsGet(t, adminURL+"/stats?filter=lds.update_rejected"), "listener_manager.lds.update_rejected: 0") {
				if time.Now().After(deadline) {
					t.Fatalf("broken listener not rejected: %s\nsluice: %s", statsGet(t, adminURL+"/stats?filter=update"), stderr.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", brokenPort), time.Second); err == nil {
				c.Close()
				t.Fatal("the listener whose script does not compile is listening")
			}
			if dump := statsGet(t, adminURL+"/config_dump"); strings.Contains(dump, `"broken"`) {
				t.Error("/config_dump shows the rejected listener as applied")
			}
		})
	}
}

func statsGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// An xDS-fed sluice is INITIALIZING — /ready 503, server.state 3,
// listener_manager.workers_started 0, what Istio's pilot-agent probes —
// until the control plane's first listeners and clusters are applied.
func TestXDSReadyAfterFirstConfig(t *testing.T) {
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app\n") })
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(context.Background(), cache, nil))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	listen, admin := freePort(t), freePort(t)
	_, xdsPort, _ := net.SplitHostPort(lis.Addr().String())
	b, err := os.ReadFile("../../samples/xds/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	boot := strings.NewReplacer("port_value: 18000", "port_value: "+xdsPort, "port_value: 9901", fmt.Sprintf("port_value: %d", admin),
		"id: sluice-sample", "id: e2e").Replace(string(b))
	cfg := filepath.Join(t.TempDir(), "bootstrap.yaml")
	if err := os.WriteFile(cfg, []byte(boot), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() { done <- runMain([]string{"run", "-c", cfg, "--log-level", "error"}, io.Discard, io.Discard) }()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	t.Cleanup(func() {
		http.Post(adminURL+"/quitquitquit", "", nil)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("sluice did not quit")
		}
	})
	probe := adminURL + `/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)`
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(statsGet(t, probe), "server.state: 3") {
		if time.Now().After(deadline) {
			t.Fatalf("not INITIALIZING before the first config: %q", statsGet(t, probe))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r, err := http.Get(adminURL + "/ready"); err != nil || r.StatusCode != 503 {
		t.Fatalf("/ready before the first config: %v %v", err, r)
	} else {
		r.Body.Close()
	}

	snap, err := cachev3.NewSnapshot("1", xdsResources(t, listen, app.addr(), 1, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), "e2e", snap); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for statsGet(t, probe) != "listener_manager.workers_started: 1\nserver.state: 0\n" {
		if time.Now().After(deadline) {
			t.Fatalf("not LIVE after the first config: %q", statsGet(t, probe))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", listen)); err != nil || r.StatusCode != 200 {
		t.Fatalf("the pushed listener: %v %v", err, r)
	} else {
		r.Body.Close()
	}
}
