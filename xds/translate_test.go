package xds

import (
	"errors"
	"strings"
	"testing"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/config"
)

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func socket(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func routerFilter(t testing.TB) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}
}

func listenerWith(t testing.TB, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    "l",
		Address: socket("127.0.0.1", 8080),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)},
		}}}},
	}
}

func simpleRoutes(routes ...*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: "rc", VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: routes}}}
}

func clusterRoute(name string) *routev3.Route {
	return &routev3.Route{
		Name:   name,
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}},
	}
}

func TestTranslateListenerDefaults(t *testing.T) {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "s",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: simpleRoutes(clusterRoute("r"))},
		HttpFilters:    []*hcmv3.HttpFilter{routerFilter(t)},
	}
	l, err := TranslateListener(listenerWith(t, hcm))
	if err != nil {
		t.Fatal(err)
	}
	h := l.FilterChains[0].HTTP
	eq(t, "defaults", *h, config.HTTPConnectionManager{
		StatPrefix:             "s",
		Codec:                  config.CodecAuto,
		RouteConfig:            h.RouteConfig,
		RequestHeadersTimeout:  10 * time.Second,
		IdleTimeout:            time.Hour,
		StreamIdleTimeout:      5 * time.Minute,
		DrainTimeout:           5 * time.Second,
		MaxRequestHeadersBytes: 60 * 1024,
		MaxHeadersCount:        100,
		GenerateRequestID:      true,
		ServerName:             "envoy",
	})
	eq(t, "route timeout default", h.RouteConfig.VirtualHosts[0].Routes[0].Action.Timeout, 15*time.Second)

	// Istio names itself.
	hcm.ServerName = "istio-envoy"
	if l, err = TranslateListener(listenerWith(t, hcm)); err != nil {
		t.Fatal(err)
	}
	eq(t, "server_name", l.FilterChains[0].HTTP.ServerName, "istio-envoy")
}

func TestTranslateClusterDefaults(t *testing.T) {
	c, err := TranslateCluster(&clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "defaults", *c, config.Cluster{
		Name: "c", Type: "EDS", ConnectTimeout: 5 * time.Second, LBPolicy: config.LBRoundRobin,
		CircuitBreakers: config.DefaultCircuitBreakers(), Protocol: "http1", IdleTimeout: time.Hour,
		RingHashMinSize: 1024, RingHashMaxSize: 8 << 20, MaglevTableSize: 65537, LeastRequestCount: 2,
	})

	_, err = TranslateCluster(&clusterv3.Cluster{Name: "c", LbSubsetConfig: &clusterv3.Cluster_LbSubsetConfig{}})
	if !errors.Is(err, ErrUnsupported) || err.Error() != `xds: cluster "c": lb_subset_config: not supported yet` {
		t.Errorf("subsets: %v", err)
	}
	_, err = TranslateCluster(&clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(-time.Second)})
	if err == nil || !strings.HasPrefix(err.Error(), `xds: cluster "c": connect_timeout: `) {
		t.Errorf("validation: %v", err)
	}
	_, err = TranslateCluster(&clusterv3.Cluster{Name: "c", LbPolicy: clusterv3.Cluster_MAGLEV,
		LbConfig: &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{}}})
	if err != nil {
		t.Errorf("maglev with default table: %v", err)
	}
	for _, bad := range []*clusterv3.Cluster{
		{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}},
		{Name: "c", LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED},
		{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}},
	} {
		if _, err := TranslateCluster(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
	if _, err := TranslateCluster(nil); err == nil {
		t.Error("nil cluster: no error")
	}
}

// outlier_detection: Envoy's defaults fill what is unset (Istio sets only
// what a DestinationRule says); a value out of range names its field (the
// proto's own validation rules say it first).
func TestTranslateOutlierDetection(t *testing.T) {
	edsCluster := func(od *clusterv3.OutlierDetection, panic *typev3.Percent) *clusterv3.Cluster {
		c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}, OutlierDetection: od}
		if panic != nil {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: panic}
		}
		return c
	}
	c, err := TranslateCluster(edsCluster(&clusterv3.OutlierDetection{
		Consecutive_5Xx: wrapperspb.UInt32(7), Interval: durationpb.New(5 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(100),
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}, &typev3.Percent{Value: 0}))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "outlier", *c.Outlier, config.OutlierDetection{
		Interval: 5 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 100, Consecutive5xx: 7, EnforcingConsecutive5xx: 100,
		ConsecutiveGatewayFailure: 5, EnforcingConsecutiveGatewayFailure: 0,
		ConsecutiveLocalOriginFailure: 5, EnforcingConsecutiveLocalOriginFailure: 100,
		EnforcingSuccessRate: 0, EnforcingLocalOriginSuccessRate: 100, SuccessRateMinimumHosts: 5,
		SuccessRateRequestVolume: 100, SuccessRateStdevFactor: 1900,
		FailurePercentageThreshold: 85, FailurePercentageMinimumHosts: 5, FailurePercentageRequestVolume: 50,
	})
	if c.HealthyPanicThreshold == nil || *c.HealthyPanicThreshold != 0 {
		t.Errorf("healthy_panic_threshold %v", c.HealthyPanicThreshold)
	}
	for _, tt := range []struct {
		c    *clusterv3.Cluster
		want string
	}{
		{edsCluster(&clusterv3.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(101)}, nil),
			`xds: cluster "c": outlier_detection.max_ejection_percent: value must be less than or equal to 100`},
		{edsCluster(&clusterv3.OutlierDetection{Interval: durationpb.New(0)}, nil),
			`xds: cluster "c": outlier_detection.interval: value must be greater than 0s`},
		{edsCluster(&clusterv3.OutlierDetection{DetectDegradedHosts: wrapperspb.Bool(true)}, nil),
			`xds: cluster "c": outlier_detection.detect_degraded_hosts: not supported yet`},
		{edsCluster(nil, &typev3.Percent{Value: 120}),
			`xds: cluster "c": common_lb_config.healthy_panic_threshold.value: value must be inside range [0, 100]`},
	} {
		if _, err := TranslateCluster(tt.c); err == nil || err.Error() != tt.want {
			t.Errorf("got %v, want %s", err, tt.want)
		}
	}
}

func TestTranslateRouteConfiguration(t *testing.T) {
	r := clusterRoute("retry")
	r.GetRoute().RetryPolicy = &routev3.RetryPolicy{}
	rc, err := TranslateRouteConfiguration(simpleRoutes(r))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "retry defaults", *rc.VirtualHosts[0].Routes[0].Action.RetryPolicy, config.RetryPolicy{
		NumRetries: 1, HostSelectionRetryMaxAttempts: 1, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond,
	})

	bad := clusterRoute("idle")
	bad.GetRoute().IdleTimeout = durationpb.New(0)
	_, err = TranslateRouteConfiguration(simpleRoutes(bad))
	if want := `xds: route_config "rc": virtual_host "vh": route "idle": route.idle_timeout: 0s: not supported yet`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}

	// Validation rules run on resources handed in directly (as from xDS).
	_, err = TranslateRouteConfiguration(&routev3.RouteConfiguration{Name: "rc", VirtualHosts: []*routev3.VirtualHost{{Domains: []string{"*"}}}})
	if err == nil || !strings.Contains(err.Error(), `route_config "rc": virtual_hosts[0].name: value length must be at least 1`) {
		t.Errorf("validation: %v", err)
	}
}

func TestPerFilterConfigTypedStruct(t *testing.T) {
	st, err := structpb.NewStruct(map[string]any{"mutations": map[string]any{"response_mutations": []any{
		map[string]any{"remove": "server"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	r := clusterRoute("r")
	r.TypedPerFilterConfig = map[string]*anypb.Any{
		"hm":    mustAny(t, &xdstypev3.TypedStruct{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute", Value: st}),
		"other": mustAny(t, &routev3.FilterConfig{Config: mustAny(t, &routerv3.Router{})}),
	}
	rc, err := TranslateRouteConfiguration(simpleRoutes(r))
	if err != nil {
		t.Fatal(err)
	}
	got := rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig
	hm := got["hm"]
	if hm == nil || hm.TypeURL != config.TypeHeaderMutationPerRoute {
		t.Fatalf("hm override %+v", hm)
	}
	eqSlice(t, "hm", hm.Config.(*config.HeaderMutationConfig).ResponseHeadersToRemove, []string{"server"})
	if o := got["other"]; o == nil || o.TypeURL != "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" {
		t.Errorf("FilterConfig-wrapped override %+v", o)
	}

	// Strict: an unknown field inside the TypedStruct is an error.
	st.Fields["bogus"] = structpb.NewBoolValue(true)
	r.TypedPerFilterConfig["hm"] = mustAny(t, &xdstypev3.TypedStruct{TypeUrl: config.TypeHeaderMutationPerRoute, Value: st})
	if _, err := TranslateRouteConfiguration(simpleRoutes(r)); err == nil || !strings.Contains(err.Error(), "typed_per_filter_config[hm]") {
		t.Errorf("bogus field: %v", err)
	}
}

func TestOptionalUnknownHTTPFilter(t *testing.T) {
	unknown := &anypb.Any{TypeUrl: "type.googleapis.com/acme.Unknown", Value: []byte{}}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "s",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "r"}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "acme", IsOptional: true, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: unknown}},
			routerFilter(t),
		},
	}
	l, err := TranslateListener(listenerWith(t, hcm))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "optional filter", *l.FilterChains[0].HTTP.HTTPFilters[0], config.HTTPFilter{Name: "acme", TypeURL: "type.googleapis.com/acme.Unknown", Optional: true})

	hcm.HttpFilters[0].IsOptional = false
	_, err = TranslateListener(listenerWith(t, hcm))
	if want := `http_filters[0] (acme): typed_config: unknown type "type.googleapis.com/acme.Unknown": not linked into sluice`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestCheckSnapshot(t *testing.T) {
	route := func(cluster string) *config.RouteConfiguration {
		return &config.RouteConfiguration{Name: "rc", VirtualHosts: []*config.VirtualHost{{Name: "vh", Routes: []*config.Route{
			{Action: &config.RouteAction{Cluster: cluster, MirrorPolicy: []config.MirrorPolicy{{Cluster: "c"}}}},
		}}}}
	}
	s := &config.Snapshot{
		Listeners: []*config.Listener{
			{Name: "a", Address: "127.0.0.1:80", FilterChains: []*config.FilterChain{{HTTP: &config.HTTPConnectionManager{RouteConfig: route("c")}}}},
			{Name: "b", Address: "[::1]:80"},
		},
		Clusters:     []*config.Cluster{{Name: "c"}},
		RouteConfigs: []*config.RouteConfiguration{route("c")},
	}
	if err := CheckSnapshot(s, true); err != nil {
		t.Fatal(err)
	}
	s.RouteConfigs[0] = route("missing")
	if err := CheckSnapshot(s, true); err == nil || err.Error() != `xds: route_config "rc": virtual_host "vh": routes[0]: unknown cluster "missing"` {
		t.Errorf("route config: %v", err)
	}
	if err := CheckSnapshot(s, false); err != nil {
		t.Errorf("clusters from CDS: %v", err)
	}
	s.Listeners[1].Address = "127.0.0.1:80"
	if err := CheckSnapshot(s, false); err == nil || !strings.Contains(err.Error(), `already used by listener "a"`) {
		t.Errorf("duplicate address: %v", err)
	}
}

func TestSnakeField(t *testing.T) {
	for in, want := range map[string]string{
		"StaticResources":               "static_resources",
		"Listeners[3]":                  "listeners[3]",
		"Http2ProtocolOptions":          "http2_protocol_options",
		"Proxy_100Continue":             "proxy_100_continue",
		"TypedPerFilterConfig[envoy.X]": "typed_per_filter_config[envoy.X]",
		"XffNumTrustedHops":             "xff_num_trusted_hops",
		"Ipv4Compat":                    "ipv4_compat",
	} {
		if got := snakeField(in); got != want {
			t.Errorf("snakeField(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJSONPathAt(t *testing.T) {
	js := []byte(`{"a": [1, {"b": {"c": true}}, 3], "d": "e"}`)
	for _, tt := range []struct {
		token string
		want  string
	}{
		{`"a"`, ".a"}, {`1`, ".a[0]"}, {`"b"`, ".a[1].b"}, {`true`, ".a[1].b.c"}, {`3`, ".a[2]"}, {`"e"`, ".d"},
	} {
		off := strings.Index(string(js), tt.token)
		if got := strings.Join(jsonPathAt(js, off), ""); got != tt.want {
			t.Errorf("path at %s = %q, want %q", tt.token, got, tt.want)
		}
	}
}

func TestPathErrorRendering(t *testing.T) {
	err := inNamed(inIndex(at(inNamed(inIndex(inField(errors.New("boom"), "x"), "", 2), "route", "r"),
		segFieldEnd, "filters[0] (f)"), "filter_chains", 1), "listener", "l")
	if want := `listener "l": filter_chains[1].filters[0] (f): route "r": [2].x: boom`; err.Error() != want {
		t.Errorf("got %s, want %s", err, want)
	}
	if got := inField(nil, "x"); got != nil {
		t.Errorf("nil error became %v", got)
	}
}
