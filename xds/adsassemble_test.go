package xds

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Assembly is tested here without a control plane: the store and the
// clock are made up, so initial fetch timeouts are exact.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testStore(t testing.TB, msgs ...proto.Message) *store {
	t.Helper()
	st := &store{}
	for _, m := range msgs {
		typ, ok := typeOf(string(m.ProtoReflect().Descriptor().FullName()))
		if !ok {
			t.Fatalf("%T is no resource type", m)
		}
		e, err := decodeResource(typ, mustAny(t, m), "1")
		if err != nil {
			t.Fatal(err)
		}
		if st.res[typ] == nil {
			st.res[typ] = map[string]*entry{}
		}
		st.res[typ][e.name] = e
		st.received[typ] = true
		st.version[typ] = "1"
	}
	return st
}

// viewAt is a view of st at t0+elapsed, every name subscribed since t0.
func viewAt(st *store, elapsed time.Duration) *view {
	return &view{st: st, now: t0.Add(elapsed), since: func(rtype, string) time.Time { return t0 }}
}

func withTimeout(cs *corev3.ConfigSource, d time.Duration) *corev3.ConfigSource {
	cs.InitialFetchTimeout = durationpb.New(d)
	return cs
}

// ecdsListener is listener "dyn" with inline routes and HTTP filter "hm"
// from ECDS.
func ecdsListener(t testing.TB, ecs *corev3.ExtensionConfigSource) *listenerv3.Listener {
	l := dynListener(t, 10002, "r")
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "dyn",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: route("inline", "/", "static")},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "hm", ConfigType: &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: ecs}},
			routerFilter(t),
		},
	}
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
	return l
}

func staticCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: "static", LoadAssignment: loadAssignment("127.0.0.1:9000")}
}

func TestAssembleWarming(t *testing.T) {
	shortRDS := dynListener(t, 10002, "r")
	var hcm hcmv3.HttpConnectionManager
	if err := shortRDS.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	hcm.GetRds().ConfigSource = withTimeout(adsSrc(), 0) // waits forever
	hcm.HttpFilters = hcm.HttpFilters[1:]
	shortRDS.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcm)}

	hm := headerMutation(t, "default")
	ecdsSource := func(def, noWarming bool) *corev3.ExtensionConfigSource {
		ecs := &corev3.ExtensionConfigSource{ConfigSource: adsSrc(), TypeUrls: []string{config.TypeHeaderMutation},
			ApplyDefaultConfigWithoutWarming: noWarming}
		if def {
			ecs.DefaultConfig = hm.GetTypedConfig()
		}
		return ecs
	}
	tests := []struct {
		name    string
		store   []proto.Message
		elapsed time.Duration
		// ok checks the snapshot; warming is what State would say.
		ok       func(*config.Snapshot) bool
		warming  string
		deadline time.Duration // 0: none
	}{
		{name: "listener waits for its route table",
			store: []proto.Message{dynListener(t, 10002, "r"), headerMutation(t, "1")}, elapsed: 14 * time.Second,
			ok:      func(s *config.Snapshot) bool { return listener(s, "dyn") == nil },
			warming: `listener "dyn" waits for route_config "r"`, deadline: 15 * time.Second},
		{name: "listener serves an empty table after the timeout",
			store: []proto.Message{dynListener(t, 10002, "r"), headerMutation(t, "1")}, elapsed: 15 * time.Second,
			ok: func(s *config.Snapshot) bool {
				rc := routeTable(s, "r")
				return listener(s, "dyn") != nil && rc != nil && len(rc.VirtualHosts) == 0
			}},
		{name: "initial_fetch_timeout 0 waits forever",
			store: []proto.Message{shortRDS}, elapsed: time.Hour,
			ok:      func(s *config.Snapshot) bool { return listener(s, "dyn") == nil },
			warming: `listener "dyn" waits for route_config "r"`},
		{name: "cluster waits for its endpoints and secret",
			store: []proto.Message{edsCluster(t, time.Second)}, elapsed: time.Second,
			ok:      func(s *config.Snapshot) bool { return cluster(s, "c") == nil },
			warming: `cluster "c" waits for cluster_load_assignment "c-svc", secret "client-cert"`, deadline: 15 * time.Second},
		{name: "cluster without endpoints after the timeout",
			store: []proto.Message{edsCluster(t, time.Second), clientCert("x")}, elapsed: 15 * time.Second,
			ok: func(s *config.Snapshot) bool {
				c := cluster(s, "c")
				return c != nil && len(c.Endpoints) == 0 && c.TLS != nil
			}},
		{name: "a secret is waited for however long",
			store: []proto.Message{edsCluster(t, time.Second), loadAssignment("10.0.0.1:80")}, elapsed: time.Hour,
			ok:      func(s *config.Snapshot) bool { return cluster(s, "c") == nil },
			warming: `cluster "c" waits for secret "client-cert"`},
		{name: "ECDS without default waits however long",
			store: []proto.Message{ecdsListener(t, ecdsSource(false, false))}, elapsed: time.Hour,
			ok:      func(s *config.Snapshot) bool { return listener(s, "dyn") == nil },
			warming: `listener "dyn" waits for extension_config "hm"`},
		{name: "ECDS default after the timeout",
			store: []proto.Message{ecdsListener(t, ecdsSource(true, false))}, elapsed: 15 * time.Second,
			ok: func(s *config.Snapshot) bool { return filterValue(s) == "default" }},
		{name: "ECDS default before the timeout: warming",
			store: []proto.Message{ecdsListener(t, ecdsSource(true, false))}, elapsed: time.Second,
			ok:      func(s *config.Snapshot) bool { return listener(s, "dyn") == nil },
			warming: `listener "dyn" waits for extension_config "hm"`, deadline: 15 * time.Second},
		{name: "ECDS default without warming",
			store: []proto.Message{ecdsListener(t, ecdsSource(true, true))},
			ok:    func(s *config.Snapshot) bool { return filterValue(s) == "default" }},
		{name: "ECDS resource over default",
			store: []proto.Message{ecdsListener(t, ecdsSource(true, true)), headerMutation(t, "dynamic")},
			ok:    func(s *config.Snapshot) bool { return filterValue(s) == "dynamic" }},
		{name: "route to a cluster CDS has not sent: 503 at request time",
			store: []proto.Message{dynListener(t, 10002, "r"), headerMutation(t, "1"), route("r", "/", "ghost")},
			ok: func(s *config.Snapshot) bool {
				return listener(s, "dyn") != nil && cluster(s, "ghost") == nil && s.DynamicClusters
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := &assembler{clusters: []*clusterv3.Cluster{staticCluster()}, dynamicClusters: true}
			a, err := as.assemble(viewAt(testStore(t, tt.store...), tt.elapsed), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.ok(a.snap) {
				t.Errorf("snapshot %s", describe(a.snap))
			}
			eq(t, "warming", strings.Join(a.warming, "; "), tt.warming)
			var deadline time.Duration
			if !a.deadline.IsZero() {
				deadline = a.deadline.Sub(t0)
			}
			eq(t, "deadline", deadline, tt.deadline)
		})
	}
}

// TestAssembleKeepsPreviousVersion: while a listener's new version waits
// for its route table, the version last applied keeps serving, with the
// table it names, and both tables stay subscribed.
func TestAssembleKeepsPreviousVersion(t *testing.T) {
	as := &assembler{clusters: []*clusterv3.Cluster{staticCluster()}, dynamicClusters: true}
	st := testStore(t, dynListener(t, 10002, "r1"), route("r1", "/one", "static"), headerMutation(t, "1"))
	prev, err := as.assemble(viewAt(st, 0), nil)
	if err != nil || listener(prev.snap, "dyn") == nil {
		t.Fatalf("%v %s", err, describe(prev.snap))
	}
	next, _ := st.apply(update{typ: tListener, full: true, set: []*entry{testStore(t, dynListener(t, 10003, "r2")).get(tListener, "dyn")}}, nil)
	// Meanwhile the filter config changes: the kept version sees it.
	next, _ = next.apply(update{typ: tExtensionConfig, set: []*entry{testStore(t, headerMutation(t, "2")).get(tExtensionConfig, "hm")}},
		map[string]bool{"hm": true})
	a, err := as.assemble(viewAt(next, time.Second), prev)
	if err != nil {
		t.Fatal(err)
	}
	l := listener(a.snap, "dyn")
	if l == nil || l.Address != "127.0.0.1:10002" || routePrefix(a.snap, "r1") != "/one" || filterValue(a.snap) != "2" {
		t.Fatalf("previous version not kept: %s", describe(a.snap))
	}
	if !a.subs[tRoute]["r1"] || !a.subs[tRoute]["r2"] {
		t.Errorf("route subscriptions %v", a.subs[tRoute])
	}
	eq(t, "warming", a.warming, []string{`listener "dyn" waits for route_config "r2"`})

	// Once r2 arrives, the new version replaces it and r1 is dropped.
	done, _ := next.apply(update{typ: tRoute, set: []*entry{testStore(t, route("r2", "/two", "static")).get(tRoute, "r2")}},
		a.subs[tRoute])
	a, err = as.assemble(viewAt(done, 2*time.Second), a)
	if err != nil {
		t.Fatal(err)
	}
	if l := listener(a.snap, "dyn"); l == nil || l.Address != "127.0.0.1:10003" || routeTable(a.snap, "r1") != nil {
		t.Errorf("new version: %s", describe(a.snap))
	}
	if a.subs[tRoute]["r1"] {
		t.Errorf("r1 still subscribed: %v", a.subs[tRoute])
	}
	if pruned := done.prune(&a.subs); pruned.get(tRoute, "r1") != nil || pruned.get(tRoute, "r2") == nil || done.get(tRoute, "r1") == nil {
		t.Errorf("prune: %v (before: %v)", pruned.names(tRoute), done.names(tRoute))
	}
}

func TestAssembleErrors(t *testing.T) {
	static := dynListener(t, 10002, "r")
	tests := []struct {
		name  string
		store []proto.Message
		want  string
	}{
		{"dynamic listener named like a static one", []proto.Message{static}, `listener "dyn": a static listener has this name`},
		{"dynamic cluster named like a static one", []proto.Message{staticCluster()}, `cluster "static": a static cluster has this name`},
		{"ECDS config of a type not allowed", []proto.Message{func() *listenerv3.Listener {
			l := ecdsListener(t, &corev3.ExtensionConfigSource{ConfigSource: adsSrc(),
				TypeUrls: []string{"type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"}})
			l.Name, l.Address = "e", socket("127.0.0.1", 10005)
			return l
		}(), headerMutation(t, "1")},
			`listener "e": filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager): http_filters[0] (hm): config_discovery: ` +
				`extension_config "hm": typed_config: type "` + config.TypeHeaderMutation + `" is not one of config_discovery.type_urls`},
		{"RDS from a file", []proto.Message{func() *listenerv3.Listener {
			l := proto.Clone(dynListener(t, 10003, "r")).(*listenerv3.Listener)
			l.Name = "file"
			var hcm hcmv3.HttpConnectionManager
			_ = l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&hcm)
			hcm.GetRds().ConfigSource = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{
				PathConfigSource: &corev3.PathConfigSource{Path: "/etc/rds.yaml"}}}
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &hcm)}
			return l
		}()}, `listener "file": filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager): rds.config_source.path_config_source: only ads config sources are supported`},
		{"EDS cluster with load_assignment", []proto.Message{func() *clusterv3.Cluster {
			c := edsCluster(t, time.Second)
			c.LoadAssignment = loadAssignment("10.0.0.1:80")
			return c
		}()}, `cluster "c": load_assignment: an EDS cluster takes its endpoints from EDS, not load_assignment`},
		{"bad endpoint in a load assignment", []proto.Message{edsCluster(t, time.Second), clientCert("x"), loadAssignment("example.com:80")},
			`cluster "c": eds_cluster_config: cluster_load_assignment "c-svc": endpoints[0].lb_endpoints[0].endpoint.address: "example.com" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			as := &assembler{listeners: []*listenerv3.Listener{static}, clusters: []*clusterv3.Cluster{staticCluster()}, dynamicClusters: true}
			_, err := as.assemble(viewAt(testStore(t, tt.store...), 0), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n  %v\nwant\n  %s", err, tt.want)
			}
		})
	}
}

func TestDecodeResourceErrors(t *testing.T) {
	tests := []struct {
		name string
		typ  rtype
		msg  proto.Message
		want string
	}{
		{"wrong type", tListener, route("r", "/", "c"), `type "type.googleapis.com/envoy.config.route.v3.RouteConfiguration" in a response of type envoy.config.listener.v3.Listener`},
		{"no name", tCluster, &clusterv3.Cluster{}, "cluster without a name"},
		{"validation", tCluster, &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(-time.Second)},
			`cluster "c": connect_timeout: value must be greater than 0s`},
		{"extension config without config", tExtensionConfig, &corev3.TypedExtensionConfig{Name: "e"},
			`extension_config "e": typed_config: value is required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeResource(tt.typ, mustAny(t, tt.msg), "1")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %s", err, tt.want)
			}
		})
	}
}
