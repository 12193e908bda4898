package xds

import (
	"context"
	ctls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// The ADS tests run a go-control-plane server (its snapshot cache serves
// both protocol variants) on 127.0.0.1 or a unix socket, and a Client
// whose Apply records snapshots after checking them as the engine does
// (server.Validate). Waits are bounded; nothing is timed.

const waitLimit = 30 * time.Second

var variants = []struct {
	name    string
	apiType string
	delta   bool
}{{"sotw", "GRPC", false}, {"delta", "DELTA_GRPC", true}}

// controlPlane is an in-process ADS server.
type testControlPlane struct {
	cache cachev3.SnapshotCache
	srv   *grpc.Server
	addr  string

	mu    sync.Mutex
	nacks []string // error_detail messages received
	acks  int
	node  *corev3.Node // of the first request
	// first are the first request of each type: the version (SotW) or
	// the initial resource versions (delta) the client said it has.
	first    map[string]map[string]string
	stopFunc func()
}

func startControlPlane(t *testing.T, network, address string, cache cachev3.SnapshotCache, opts ...grpc.ServerOption) *testControlPlane {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	cp := &testControlPlane{cache: cache, srv: grpc.NewServer(opts...), addr: ln.Addr().String(), first: map[string]map[string]string{}}
	record := func(detail interface{ GetMessage() string }, hasDetail bool, node *corev3.Node, typeURL string, versions map[string]string) {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if cp.node == nil {
			cp.node = node
		}
		if _, ok := cp.first[typeURL]; !ok {
			cp.first[typeURL] = versions
		}
		if hasDetail {
			cp.nacks = append(cp.nacks, detail.GetMessage())
		} else {
			cp.acks++
		}
	}
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			record(r.GetErrorDetail(), r.GetErrorDetail() != nil, r.GetNode(), r.GetTypeUrl(), map[string]string{"": r.GetVersionInfo()})
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			record(r.GetErrorDetail(), r.GetErrorDetail() != nil, r.GetNode(), r.GetTypeUrl(), r.GetInitialResourceVersions())
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, serverv3.NewServer(ctx, cache, cb))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cp.srv.Serve(ln)
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cp.srv.Stop()
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	cp.stopFunc = stop
	return cp
}

func (cp *testControlPlane) stop() { cp.stopFunc() }

func (cp *testControlPlane) firstRequest(typeURL string) map[string]string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.first[typeURL]
}

func (cp *testControlPlane) nackMessages() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.nacks)
}

func newCache() cachev3.SnapshotCache { return cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil) }

// resources is a control plane's config, edited by tests.
type resources struct {
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	secrets   []*tlsv3.Secret
	ecds      []*corev3.TypedExtensionConfig
}

func (r *resources) set(t *testing.T, cache cachev3.SnapshotCache, version string) {
	t.Helper()
	m := map[resourcev3.Type][]types.Resource{}
	for _, l := range r.listeners {
		m[resourcev3.ListenerType] = append(m[resourcev3.ListenerType], l)
	}
	for _, x := range r.routes {
		m[resourcev3.RouteType] = append(m[resourcev3.RouteType], x)
	}
	for _, x := range r.clusters {
		m[resourcev3.ClusterType] = append(m[resourcev3.ClusterType], x)
	}
	for _, x := range r.endpoints {
		m[resourcev3.EndpointType] = append(m[resourcev3.EndpointType], x)
	}
	for _, x := range r.secrets {
		m[resourcev3.SecretType] = append(m[resourcev3.SecretType], x)
	}
	for _, x := range r.ecds {
		m[resourcev3.ExtensionConfigType] = append(m[resourcev3.ExtensionConfigType], x)
	}
	snap, err := cachev3.NewSnapshot(version, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.SetSnapshot(context.Background(), "sluice-test", snap); err != nil {
		t.Fatal(err)
	}
}

func adsSrc() *corev3.ConfigSource {
	return &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion: corev3.ApiVersion_V3}
}

func inline(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

func headerMutation(t testing.TB, value string) *corev3.TypedExtensionConfig {
	return &corev3.TypedExtensionConfig{Name: "hm", TypedConfig: mustAny(t, &headermutationv3.HeaderMutation{
		Mutations: &headermutationv3.Mutations{RequestMutations: []*mutationrulesv3.HeaderMutation{{
			Action: &mutationrulesv3.HeaderMutation_Append{Append: &corev3.HeaderValueOption{
				Header: &corev3.HeaderValue{Key: "x-version", Value: value}}}}}}})}
}

// dynListener is listener "dyn": its routes come from RDS table "r", and
// an HTTP filter "hm" from ECDS.
func dynListener(t testing.TB, port uint32, route string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "dyn",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route, ConfigSource: adsSrc()}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "hm", ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{
				ConfigSource: adsSrc(), TypeUrls: []string{config.TypeHeaderMutation}}}},
			routerFilter(t),
		},
	}
	l := listenerWith(t, hcm)
	l.Name = "dyn"
	l.Address = socket("127.0.0.1", port)
	return l
}

func route(name, prefix, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:   "to-" + cluster,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}}}}}
}

// edsCluster is cluster "c": endpoints from EDS service "c-svc", TLS with a
// client certificate from SDS secret "client-cert".
func edsCluster(t testing.TB, timeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 "c",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSrc(), ServiceName: "c-svc"},
		ConnectTimeout:       durationpb.New(timeout),
		TransportSocket: &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{
			TypedConfig: mustAny(t, &tlsv3.UpstreamTlsContext{Sni: "c.internal", CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "client-cert", SdsConfig: adsSrc()}},
			}})}},
	}
}

func loadAssignment(addrs ...string) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: "c-svc"}
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		var p uint32
		fmt.Sscan(port, &p)
		la.Endpoints = append(la.Endpoints, &endpointv3.LocalityLbEndpoints{
			Priority: uint32(i),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socket(host, p)}},
				LoadBalancingWeight: wrapperspb.UInt32(uint32(10 + i)),
			}},
		})
	}
	return la
}

func clientCert(chain string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: "client-cert", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(chain), PrivateKey: inline("key")}}}
}

// fullConfig is every resource type: listener "dyn" → route "r" →
// cluster "c" (EDS "c-svc", SDS "client-cert"), and ECDS filter "hm".
func fullConfig(t *testing.T) *resources {
	return &resources{
		listeners: []*listenerv3.Listener{dynListener(t, 10002, "r")},
		routes:    []*routev3.RouteConfiguration{route("r", "/", "c")},
		clusters:  []*clusterv3.Cluster{edsCluster(t, time.Second)},
		endpoints: []*endpointv3.ClusterLoadAssignment{loadAssignment("10.0.0.1:80")},
		secrets:   []*tlsv3.Secret{clientCert("chain-1")},
		ecds:      []*corev3.TypedExtensionConfig{headerMutation(t, "1")},
	}
}

// recorder is the Apply of the tests.
type recorder struct {
	mu    sync.Mutex
	snaps []*config.Snapshot
	wake  chan struct{}
}

// engineSaysNo stands for an engine error: it rejects a cluster "c" with a
// connect timeout of 7 s.
func engineSaysNo(s *config.Snapshot) error {
	if c := cluster(s, "c"); c != nil && c.ConnectTimeout == 7*time.Second {
		return errors.New("engine says no")
	}
	// As the engine does, an error it can pin on one resource says so.
	if l := listener(s, "vetoed"); l != nil {
		return config.Blame(errors.New(`server: listener "vetoed": engine vetoes it`), config.KindListener, "vetoed")
	}
	return nil
}

func newRecorder() *recorder { return &recorder{wake: make(chan struct{}, 1)} }

func (r *recorder) apply(s *config.Snapshot) error {
	if err := server.Validate(s); err != nil {
		return err
	}
	if err := engineSaysNo(s); err != nil {
		return err
	}
	r.mu.Lock()
	r.snaps = append(r.snaps, s)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) all() []*config.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.snaps)
}

func (r *recorder) last() *config.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snaps) == 0 {
		return nil
	}
	return r.snaps[len(r.snaps)-1]
}

// wait waits for the last applied snapshot to satisfy ok.
func (r *recorder) wait(t *testing.T, what string, ok func(*config.Snapshot) bool) *config.Snapshot {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		if s := r.last(); s != nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot with %s; last applied: %s", what, describe(r.last()))
		}
		select {
		case <-r.wake:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startADS starts a control plane serving fullConfig as version "1" and a
// client of it (apiType GRPC or DELTA_GRPC) applying to a recorder.
func startADS(t *testing.T, apiType string) (cachev3.SnapshotCache, *testControlPlane, *resources, *recorder, *Client) {
	t.Helper()
	cache := newCache()
	cp := startControlPlane(t, "tcp", "127.0.0.1:0", cache)
	res := fullConfig(t)
	res.set(t, cache, "1")
	rec := newRecorder()
	c := runClient(t, bootstrapFor(t, apiType, tcpAddress(cp.addr), ""), rec.apply)
	return cache, cp, res, rec, c
}

// waitErrorsCleared waits until no type of c's state has an error.
func waitErrorsCleared(t *testing.T, c *Client) {
	t.Helper()
	waitFor(t, "errors cleared", func() bool {
		for _, ts := range c.State().Types {
			if ts.LastError != "" {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond, bounded.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func describe(s *config.Snapshot) string {
	if s == nil {
		return "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version %q listeners", s.Version)
	for _, l := range s.Listeners {
		fmt.Fprintf(&b, " %s@%s", l.Name, l.Address)
	}
	b.WriteString(" clusters")
	for _, c := range s.Clusters {
		fmt.Fprintf(&b, " %s%v", c.Name, endpointAddrs(c))
	}
	b.WriteString(" routes")
	for _, rc := range s.RouteConfigs {
		fmt.Fprintf(&b, " %s", rc.Name)
	}
	return b.String()
}

func listener(s *config.Snapshot, name string) *config.Listener {
	for _, l := range s.Listeners {
		if l.Name == name {
			return l
		}
	}
	return nil
}

func cluster(s *config.Snapshot, name string) *config.Cluster {
	for _, c := range s.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func routeTable(s *config.Snapshot, name string) *config.RouteConfiguration {
	for _, rc := range s.RouteConfigs {
		if rc.Name == name {
			return rc
		}
	}
	return nil
}

func endpointAddrs(c *config.Cluster) []string {
	if c == nil {
		return nil
	}
	var out []string
	for _, e := range c.Endpoints {
		out = append(out, e.Address)
	}
	return out
}

func routePrefix(s *config.Snapshot, table string) string {
	rc := routeTable(s, table)
	if rc == nil || len(rc.VirtualHosts) == 0 || len(rc.VirtualHosts[0].Routes) == 0 {
		return ""
	}
	return rc.VirtualHosts[0].Routes[0].Match.Prefix
}

func filterValue(s *config.Snapshot) string {
	l := listener(s, "dyn")
	if l == nil {
		return ""
	}
	for _, f := range l.FilterChains[0].HTTP.HTTPFilters {
		if hm, ok := f.Config.(*config.HeaderMutationConfig); ok && f.Name == "hm" && len(hm.RequestHeadersToAdd) > 0 {
			return hm.RequestHeadersToAdd[0].Value
		}
	}
	return ""
}

func certChain(s *config.Snapshot) string {
	c := cluster(s, "c")
	if c == nil || c.TLS == nil || c.TLS.Certificate == nil {
		return ""
	}
	return string(c.TLS.Certificate.Chain.Inline)
}

// bootstrapFor reads testdata/ads/bootstrap.yaml for an API type and a
// control plane address (a YAML Address), with an optional transport
// socket for the "xds" cluster.
func bootstrapFor(t *testing.T, apiType, address, transportSocket string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "ads", "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.NewReplacer("API_TYPE", apiType, "ADDRESS", address, "TLS", transportSocket).Replace(string(data)))
}

func tcpAddress(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("{ socket_address: { address: %s, port_value: %s } }", host, port)
}

// runClient starts a client on a bootstrap; it stops at the end of the
// test.
func runClient(t *testing.T, data []byte, apply func(*config.Snapshot) error) *Client {
	t.Helper()
	b, err := DecodeBootstrap(data, "bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientOptions{Bootstrap: b, Apply: apply, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
		Source: "bootstrap.yaml", MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

// complete says whether a snapshot holds the whole fullConfig.
func complete(s *config.Snapshot) bool {
	return listener(s, "dyn") != nil && routeTable(s, "r") != nil && len(endpointAddrs(cluster(s, "c"))) > 0 &&
		certChain(s) != "" && filterValue(s) != ""
}

func TestADSInitialAndUpdates(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cache, cp, res, rec, c := startADS(t, v.apiType)

			s := rec.wait(t, "the initial config", complete)
			if l := listener(s, "static"); l == nil || cluster(s, "static") == nil {
				t.Errorf("static resources missing: %s", describe(s))
			}
			if cluster(s, "xds") != nil {
				t.Errorf("the control plane's cluster is in the snapshot")
			}
			cp.mu.Lock()
			node := cp.node
			cp.mu.Unlock()
			if node.GetId() != "sluice-test" || node.GetCluster() != "test" || node.GetUserAgentName() != "sluice" ||
				node.GetMetadata().GetFields()["team"].GetStringValue() != "edge" {
				t.Errorf("node %v", node)
			}
			h := listener(s, "dyn").FilterChains[0].HTTP
			eq(t, "RDS name", h.RDSName, "r")
			eq(t, "route cluster", routeTable(s, "r").VirtualHosts[0].Routes[0].Action.Cluster, "c")
			cl := cluster(s, "c")
			eq(t, "endpoints", derefs(cl.Endpoints), []config.Endpoint{{Address: "10.0.0.1:80", Weight: 10, Healthy: true}})
			eq(t, "cluster type", cl.Type, "EDS")
			eq(t, "SNI", cl.TLS.SNI, "c.internal")
			eq(t, "certificate", certChain(s), "chain-1")
			eq(t, "filter", filterValue(s), "1")
			for _, short := range []string{"cds:1", "eds:1", "lds:1", "rds:1", "sds:1", "ecds:1"} {
				if !strings.Contains(s.Version, short) {
					t.Errorf("version %q lacks %s", s.Version, short)
				}
			}
			if !strings.HasPrefix(s.Source, "bootstrap.yaml + ads ") {
				t.Errorf("source %q", s.Source)
			}

			updates := []struct {
				name   string
				change func(*resources)
				ok     func(*config.Snapshot) bool
			}{
				{"route", func(r *resources) { r.routes[0] = route("r", "/v2", "c") },
					func(s *config.Snapshot) bool { return routePrefix(s, "r") == "/v2" }},
				{"endpoints", func(r *resources) { r.endpoints[0] = loadAssignment("10.0.0.2:81", "10.0.0.3:82") },
					func(s *config.Snapshot) bool {
						return slices.Equal(endpointAddrs(cluster(s, "c")), []string{"10.0.0.2:81", "10.0.0.3:82"}) &&
							cluster(s, "c").Endpoints[1].Priority == 1 && cluster(s, "c").Endpoints[1].Weight == 11
					}},
				{"cluster", func(r *resources) { r.clusters[0] = edsCluster(t, 3*time.Second) },
					func(s *config.Snapshot) bool { return cluster(s, "c").ConnectTimeout == 3*time.Second && complete(s) }},
				{"listener", func(r *resources) { r.listeners[0] = dynListener(t, 10003, "r") },
					func(s *config.Snapshot) bool {
						l := listener(s, "dyn")
						return l != nil && l.Address == "127.0.0.1:10003"
					}},
				{"secret", func(r *resources) { r.secrets[0] = clientCert("chain-2") },
					func(s *config.Snapshot) bool { return certChain(s) == "chain-2" }},
				{"extension config", func(r *resources) { r.ecds[0] = headerMutation(t, "2") },
					func(s *config.Snapshot) bool { return filterValue(s) == "2" }},
				{"route renamed", func(r *resources) {
					r.listeners[0] = dynListener(t, 10003, "r2")
					r.routes = []*routev3.RouteConfiguration{route("r2", "/r2", "c")}
				}, func(s *config.Snapshot) bool { return routePrefix(s, "r2") == "/r2" && routeTable(s, "r") == nil }},
			}
			for i, u := range updates {
				u.change(res)
				res.set(t, cache, fmt.Sprint(i+2))
				s = rec.wait(t, u.name+" update", u.ok)
				if !complete(s) && u.name != "route renamed" {
					t.Errorf("%s update: incomplete snapshot %s", u.name, describe(s))
				}
			}
			// State is published after the ACK, a moment after Apply.
			waitFor(t, "the state to show the old route table dropped", func() bool {
				for _, ts := range c.State().Types {
					if ts.TypeURL == typeInfo[tRoute].url {
						return slices.Equal(ts.Resources, []string{"r2"})
					}
				}
				return false
			})
			st := c.State()
			if !st.Connected || st.Delta != v.delta || len(st.Types) != 6 || st.LastError != "" || st.Applied != rec.last().Version {
				t.Errorf("state %+v", st)
			}
			for _, ts := range st.Types {
				if ts.LastError != "" || ts.Nonce == "" || ts.Version == "" || len(ts.Resources) != 1 {
					t.Errorf("type state %+v", ts)
				}
			}
			if n := cp.nackMessages(); len(n) > 0 {
				t.Errorf("NACKs: %q", n)
			}
		})
	}
}

func TestADSWarming(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cache := newCache()
			cp := startControlPlane(t, "tcp", "127.0.0.1:0", cache)
			res := fullConfig(t)
			// The listener's route table and the cluster's endpoints are
			// not there yet.
			routes, endpoints := res.routes, res.endpoints
			res.routes, res.endpoints = nil, nil
			res.set(t, cache, "1")
			rec := newRecorder()
			c := runClient(t, bootstrapFor(t, v.apiType, tcpAddress(cp.addr), ""), rec.apply)

			waitFor(t, "the listener to warm", func() bool {
				w := strings.Join(c.State().Warming, "; ")
				return strings.Contains(w, `listener "dyn" waits for route_config "r"`) &&
					strings.Contains(w, `cluster "c" waits for cluster_load_assignment "c-svc"`)
			})
			for _, s := range rec.all() {
				if listener(s, "dyn") != nil || len(endpointAddrs(cluster(s, "c"))) > 0 {
					t.Fatalf("applied before warm: %s", describe(s))
				}
			}
			if s := rec.last(); listener(s, "static") == nil {
				t.Errorf("the static listener does not serve meanwhile: %s", describe(s))
			}

			res.routes = routes
			res.set(t, cache, "2")
			s := rec.wait(t, "the listener once its route arrived", func(s *config.Snapshot) bool { return listener(s, "dyn") != nil })
			if routeTable(s, "r") == nil {
				t.Errorf("no route table: %s", describe(s))
			}
			// Route "r" names cluster "c", which still waits for its
			// endpoints: it is not in the snapshot, and the route answers
			// 503 meanwhile.
			if c := cluster(s, "c"); c != nil || !s.DynamicClusters {
				t.Errorf("cluster c before its endpoints: %+v (dynamic clusters %v)", c, s.DynamicClusters)
			}
			res.endpoints = endpoints
			res.set(t, cache, "3")
			rec.wait(t, "the cluster once its endpoints arrived", complete)
			waitFor(t, "no more warming", func() bool { return len(c.State().Warming) == 0 })
		})
	}
}

// TestADSInitialFetchTimeout: a listener whose route table does not come
// is applied after its initial_fetch_timeout, with Envoy's empty table.
func TestADSInitialFetchTimeout(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cache := newCache()
			cp := startControlPlane(t, "tcp", "127.0.0.1:0", cache)
			res := fullConfig(t)
			l := res.listeners[0]
			var hcm hcmv3.HttpConnectionManager
			if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				t.Fatal(err)
			}
			hcm.GetRds().ConfigSource = withTimeout(adsSrc(), 200*time.Millisecond)
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcm)}
			res.routes = nil
			res.set(t, cache, "1")
			rec := newRecorder()
			c := runClient(t, bootstrapFor(t, v.apiType, tcpAddress(cp.addr), ""), rec.apply)
			s := rec.wait(t, "the listener after its timeout", func(s *config.Snapshot) bool { return listener(s, "dyn") != nil })
			if rc := routeTable(s, "r"); rc == nil || len(rc.VirtualHosts) != 0 {
				t.Errorf("route table %+v, want an empty one", rc)
			}
			// The table still comes when the control plane has it.
			res.routes = []*routev3.RouteConfiguration{route("r", "/late", "c")}
			res.set(t, cache, "2")
			rec.wait(t, "the late route table", func(s *config.Snapshot) bool { return routePrefix(s, "r") == "/late" })
			if w := c.State().Warming; len(w) > 0 {
				t.Errorf("warming %q", w)
			}
		})
	}
}

func TestADSNack(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cache, cp, res, rec, c := startADS(t, v.apiType)
			good := rec.wait(t, "the initial config", complete)

			bad := []struct {
				name, want string
				change     func(*resources)
			}{
				{"bad route regex", `xds: route_config "r": virtual_host "vh": route "bad": match.safe_regex.regex: invalid regex "(+"`,
					func(r *resources) {
						rc := route("r", "/", "c")
						rc.VirtualHosts[0].Routes[0].Name = "bad"
						rc.VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(+"}}
						r.routes[0] = rc
					}},
				{"listener address in use", `listener "dyn": address 127.0.0.1:10001 is already used by listener "static"`,
					func(r *resources) { r.listeners[0] = dynListener(t, 10001, "r") }},
				{"cluster the engine rejects", `: engine says no`,
					func(r *resources) { r.clusters[0] = edsCluster(t, 7*time.Second) }},
				{"bad secret", `xds: cluster "c": transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]: secret "client-cert": a tls_certificate is required`,
					func(r *resources) {
						r.secrets[0] = &tlsv3.Secret{Name: "client-cert", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}}
					}},
			}
			for i, b := range bad {
				before := len(cp.nackMessages())
				fixed := fullConfig(t)
				b.change(fixed)
				fixed.set(t, cache, fmt.Sprint(10+i))
				waitFor(t, b.name+" NACKed", func() bool {
					for _, m := range cp.nackMessages()[before:] {
						if strings.Contains(m, b.want) {
							return true
						}
					}
					return false
				})
				if s := rec.last(); s != good {
					t.Fatalf("%s: a snapshot was applied: %s", b.name, describe(s))
				}
				var lastErr string
				for _, ts := range c.State().Types {
					lastErr += ts.LastError
				}
				if !strings.Contains(lastErr, b.want) {
					t.Errorf("%s: state errors %q", b.name, lastErr)
				}
			}
			// A good config after NACKs is taken (the repeated NACKs are
			// delayed, so this may take a few seconds).
			res.routes[0] = route("r", "/fixed", "c")
			res.set(t, cache, "20")
			rec.wait(t, "the fixed config", func(s *config.Snapshot) bool { return routePrefix(s, "r") == "/fixed" && complete(s) })
			waitErrorsCleared(t, c)
		})
	}
}

// TestADSPartialUpdate: as Envoy, the good resources of a partly bad
// response are applied; the bad ones (refused by the translator or pinned
// by the engine) keep their previous version or stay out, and the
// response is NACKed naming each of them.
func TestADSPartialUpdate(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cache, cp, res, rec, c := startADS(t, v.apiType)
			rec.wait(t, "the initial config", complete)

			named := func(l *listenerv3.Listener, name string) *listenerv3.Listener {
				l.Name = name
				return l
			}
			// "dyn" moves to port 10012 (good), "more" is new (good),
			// "broken" is new with a field Sluice refuses, and "dyn2" is
			// pinned by the engine.
			broken := named(dynListener(t, 10013, "r"), "broken")
			broken.Freebind = wrapperspb.Bool(true)
			res.listeners = []*listenerv3.Listener{dynListener(t, 10012, "r"), named(dynListener(t, 10011, "r"), "more"),
				broken, named(dynListener(t, 10014, "r"), "vetoed")}
			before := len(cp.nackMessages())
			res.set(t, cache, "2")
			s := rec.wait(t, "the good listeners", func(s *config.Snapshot) bool {
				return listener(s, "more") != nil && listener(s, "dyn") != nil && listener(s, "dyn").Address == "127.0.0.1:10012"
			})
			if listener(s, "broken") != nil || listener(s, "vetoed") != nil {
				t.Fatalf("a rejected listener was applied: %s", describe(s))
			}
			var nack string
			waitFor(t, "the NACK", func() bool {
				msgs := cp.nackMessages()[before:]
				if len(msgs) == 0 {
					return false
				}
				nack = msgs[0]
				return true
			})
			for _, want := range []string{`listener "broken": freebind: not supported yet`, `listener "vetoed": engine vetoes it`} {
				if !strings.Contains(nack, want) {
					t.Errorf("NACK %q does not say %q", nack, want)
				}
			}
			var lds TypeState
			for _, ts := range c.State().Types {
				if ts.TypeURL == typeInfo[tListener].url {
					lds = ts
				}
			}
			if !strings.Contains(lds.LastError, `listener "broken"`) || slices.Contains(lds.Resources, "broken") || !slices.Contains(lds.Resources, "more") {
				t.Errorf("LDS state %+v", lds)
			}
			if !v.delta && lds.Version != "1" {
				t.Errorf("LDS version after a NACK %q, want the last accepted (1)", lds.Version)
			}

			// Fixed, everything is taken and the error clears.
			res.listeners[2].Freebind = nil
			res.listeners[3].Name = "fine"
			res.set(t, cache, "3")
			rec.wait(t, "the fixed listeners", func(s *config.Snapshot) bool {
				return listener(s, "broken") != nil && listener(s, "fine") != nil
			})
			waitErrorsCleared(t, c)
		})
	}
}

func TestADSReconnect(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			_, cp, res, rec, c := startADS(t, v.apiType)
			rec.wait(t, "the initial config", complete)
			n := len(rec.all())

			cp.stop()
			waitFor(t, "the client to see the control plane gone", func() bool { return !c.State().Connected })

			// A new control plane on the same address, with new config.
			cache2 := newCache()
			res.routes[0] = route("r", "/after-restart", "c")
			res.set(t, cache2, "1")
			var cp2 *testControlPlane
			waitFor(t, "the address to be free", func() bool {
				ln, err := net.Listen("tcp", cp.addr)
				if err != nil {
					return false
				}
				ln.Close()
				cp2 = startControlPlane(t, "tcp", cp.addr, cache2)
				return true
			})
			rec.wait(t, "config from the new control plane", func(s *config.Snapshot) bool {
				return routePrefix(s, "r") == "/after-restart" && complete(s)
			})
			for _, s := range rec.all()[n:] {
				if !complete(s) {
					t.Errorf("a snapshot without the old config was applied meanwhile: %s", describe(s))
				}
			}
			// The client told the new control plane what it had.
			for _, typ := range []rtype{tListener, tRoute} {
				got := cp2.firstRequest(typeInfo[typ].url)
				if v.delta && got[map[rtype]string{tListener: "dyn", tRoute: "r"}[typ]] == "" || !v.delta && got[""] != "1" {
					t.Errorf("first %s request: %v", typ, got)
				}
			}
			if m := cp2.nackMessages(); len(m) > 0 {
				t.Errorf("NACKs: %q", m)
			}
		})
	}
}

// TestADSTransports reaches the control plane over a unix socket, through
// google_grpc, and over TLS with Envoy's verification of the server's
// certificate (CA and subject alt name).
func TestADSTransports(t *testing.T) {
	ca := tlstest.NewCA(t, "xds-ca")
	leaf := ca.Issue(t, "xds.internal")
	serverTLS := grpc.Creds(credentials.NewTLS(&ctls.Config{Certificates: []ctls.Certificate{leaf.TLSCertificate(t)}}))
	indent := func(pem []byte) string { return strings.ReplaceAll(string(pem), "\n", "\n                ") }
	clientTLS := `    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: xds.internal
        common_tls_context:
          validation_context:
            match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: xds.internal } }]
            trusted_ca:
              inline_string: |
                ` + indent(ca.CertPEM)
	tests := []struct {
		name, variant string
		// listen returns the network and address to listen on.
		listen func(t *testing.T) (string, string)
		// bootstrap edits the bootstrap for the control plane's address.
		bootstrap func(t *testing.T, apiType, addr string) []byte
		opts      []grpc.ServerOption
		target    func(addr string) string
	}{
		{name: "unix socket", listen: unixSocket,
			bootstrap: func(t *testing.T, apiType, addr string) []byte {
				return bootstrapFor(t, apiType, fmt.Sprintf("{ pipe: { path: %q } }", addr), "")
			},
			target: func(addr string) string { return "unix://" + addr }},
		{name: "google_grpc", listen: loopback,
			bootstrap: func(t *testing.T, apiType, addr string) []byte {
				b := bootstrapFor(t, apiType, tcpAddress("127.0.0.1:1"), "")
				return []byte(strings.Replace(string(b), "envoy_grpc: { cluster_name: xds }",
					fmt.Sprintf("google_grpc: { target_uri: %q, stat_prefix: xds }", addr), 1))
			},
			target: func(addr string) string { return addr }},
		{name: "TLS", listen: loopback, opts: []grpc.ServerOption{serverTLS},
			bootstrap: func(t *testing.T, apiType, addr string) []byte {
				return bootstrapFor(t, apiType, tcpAddress(addr), clientTLS)
			},
			target: func(addr string) string { return "dns:///" + addr }},
	}
	t.Run("TLS with the wrong server name", func(t *testing.T) {
		cache := newCache()
		cp := startControlPlane(t, "tcp", "127.0.0.1:0", cache, serverTLS)
		fullConfig(t).set(t, cache, "1")
		rec := newRecorder()
		c := runClient(t, bootstrapFor(t, "GRPC", tcpAddress(cp.addr), strings.Replace(clientTLS, "exact: xds.internal", "exact: other.internal", 1)), rec.apply)
		waitFor(t, "a handshake error", func() bool { return strings.Contains(c.State().LastError, "other.internal") })
		for _, s := range rec.all() {
			if listener(s, "dyn") != nil {
				t.Fatalf("config from an unverified control plane: %s", describe(s))
			}
		}
	})
	for _, tt := range tests {
		for _, v := range variants {
			t.Run(tt.name+"/"+v.name, func(t *testing.T) {
				network, address := tt.listen(t)
				cache := newCache()
				cp := startControlPlane(t, network, address, cache, tt.opts...)
				fullConfig(t).set(t, cache, "1")
				rec := newRecorder()
				c := runClient(t, tt.bootstrap(t, v.apiType, cp.addr), rec.apply)
				rec.wait(t, "the config", complete)
				if st := c.State(); st.Target != tt.target(cp.addr) {
					t.Errorf("target %q, want %q", st.Target, tt.target(cp.addr))
				}
			})
		}
	}
}

func loopback(*testing.T) (string, string) { return "tcp", "127.0.0.1:0" }

// unixSocket returns a socket path short enough for sun_path (t.TempDir's
// can be too long).
func unixSocket(t *testing.T) (string, string) {
	dir, err := os.MkdirTemp("", "xds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return "unix", filepath.Join(dir, "xds.sock")
}

func TestNewClientErrors(t *testing.T) {
	const good = `
node: { id: node-1 }
dynamic_resources:
  ads_config: { api_type: GRPC, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }
  lds_config: { ads: {} }
static_resources:
  clusters:
  - name: xds
    load_assignment: { cluster_name: xds, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } } }] }] }
`
	tests := []struct {
		name, replace, with, want string
		unsupported               bool
	}{
		{"no ads_config", "ads_config: { api_type: GRPC, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }", "",
			"xds: dynamic_resources.ads_config is required", false},
		{"lds from a file", "lds_config: { ads: {} }", "lds_config: { path_config_source: { path: /etc/lds.yaml } }",
			"xds: dynamic_resources.lds_config.path_config_source: only ads config sources are supported: not supported yet", true},
		{"cds over its own stream", "lds_config: { ads: {} }", "cds_config: { api_config_source: { api_type: GRPC, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] } }",
			"xds: dynamic_resources.cds_config.api_config_source: only ads config sources are supported: not supported yet", true},
		{"REST", "api_type: GRPC", "api_type: REST",
			"xds: dynamic_resources.ads_config.api_type: REST: not supported yet", true},
		{"unknown cluster", "cluster_name: xds } }]", "cluster_name: nope } }]",
			`xds: dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: no static cluster "nope"`, false},
		{"two services", "grpc_services: [{ envoy_grpc: { cluster_name: xds } }]", "grpc_services: [{ envoy_grpc: { cluster_name: xds } }, { envoy_grpc: { cluster_name: xds } }]",
			"xds: dynamic_resources.ads_config: exactly one grpc_services is required, not 2", false},
		{"xdstp locator", "lds_config: { ads: {} }", "lds_resources_locator: xdstp://x/envoy.config.listener.v3.Listener/*",
			"xds: dynamic_resources.lds_resources_locator: not supported yet", true},
		{"EDS control plane", "- name: xds\n", "- name: xds\n    type: EDS\n    eds_cluster_config: { eds_config: { ads: {} } }\n",
			`xds: dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: cluster "xds": eds_cluster_config: not supported yet`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(good, tt.replace, tt.with, 1)
			if doc == good {
				t.Fatalf("%q not in the template", tt.replace)
			}
			b, err := DecodeBootstrap([]byte(doc), "b.yaml")
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewClient(ClientOptions{Bootstrap: b, Apply: func(*config.Snapshot) error { return nil }})
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error\n  %v\nwant\n  %s", err, tt.want)
			}
			if got := errors.Is(err, ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v", got)
			}
		})
	}
	b, err := DecodeBootstrap([]byte(good), "b.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(ClientOptions{Bootstrap: b, Apply: func(*config.Snapshot) error { return nil }}); err != nil {
		t.Errorf("template: %v", err)
	}
}
