package xds

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestLoadBootstrapErrors(t *testing.T) {
	const hcm = `listener "public": filter_chains[0].filters[0] (envoy.filters.network.http_connection_manager): `
	tests := []struct {
		file        string
		want        []string
		unsupported bool
	}{
		{file: "unknown_field.yaml", want: []string{
			`xds: testdata/bad/unknown_field.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].match: unknown field "prefx"`}},
		{file: "syntax.json", want: []string{`xds: testdata/bad/syntax.json:3:19: static_resources.clusters[0]: unknown field "conect_timeout"`}},
		{file: "unknown_enum.yaml", want: []string{`static_resources.clusters[0].lb_policy: invalid value for enum`, `"ROUND_ROBBIN"`}},
		{file: "unknown_any.yaml", want: []string{
			`filters[0].typed_config.http_filters[0].typed_config: unknown Any type "type.googleapis.com/acme.filters.Magic"`}},
		{file: "negative_timeout.yaml", want: []string{`static_resources.clusters[0].connect_timeout: value must be greater than 0s`}},
		{file: "bad_regex.yaml", want: []string{hcm + `route_config: virtual_host "all": route "bad": match.safe_regex.regex: invalid regex "/items/(+"`}},
		{file: "bad_header_regex.yaml", want: []string{`route "hdr": match.headers[0].string_match.safe_regex.regex: invalid regex "[a-"`}},
		{file: "unknown_cluster.yaml", want: []string{hcm + `route_config: virtual_host "all": route "r1": unknown cluster "nope"`}},
		{file: "unknown_weighted_cluster.yaml", want: []string{`route "split": unknown weighted cluster "ghost"`}},
		{file: "missing_router.yaml", want: []string{hcm + `http_filters: the router filter (envoy.filters.http.router) is required`}},
		{file: "router_not_last.yaml", want: []string{hcm + `http_filters[0] (envoy.filters.http.router): the router filter must be the last HTTP filter`}},
		{file: "retry_on_typo.yaml", want: []string{`route "retry": route.retry_policy.retry_on: unknown retry condition "conect-failure"`}},
		{file: "duplicate_domain.yaml", want: []string{`virtual_host "two": domain "example.com" is already served by virtual host "one"`}},
		{file: "duplicate_listener.yaml", want: []string{`duplicate listener name "public"`}},
		{file: "duplicate_address.yaml", want: []string{`listener "second": address 127.0.0.1:8080 is already used by listener "public"`}},
		{file: "duplicate_cluster.yaml", want: []string{`duplicate cluster name "backend"`}},
		{file: "static_hostname.yaml", want: []string{`cluster "backend": load_assignment.endpoints[0].lb_endpoints[0].endpoint.address: "backend.internal" is not an IP address`}},
		{file: "tcp_proxy.yaml", unsupported: true, want: []string{
			`listener "tcp": filter_chains[0].filters[0] (envoy.filters.network.tcp_proxy): tunneling_config: not supported yet`}},
		{file: "sds.yaml", unsupported: true, want: []string{
			`listener "https": filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: secret "kubernetes://gateway-cert" from SDS needs the xDS client (dynamic_resources.ads_config): not supported yet`}},
		{file: "tls_env_key.yaml", unsupported: true, want: []string{
			`xds: testdata/bad/tls_env_key.yaml: static_resources.listeners[0].filter_chains[1].transport_socket.typed_config.common_tls_context.tls_certificates[0].private_key.environment_variable: not supported yet`}},
		{file: "health_checks.yaml", unsupported: true, want: []string{`cluster "backend": health_checks: not supported yet`}},
		{file: "header_mutation_order.yaml", unsupported: true, want: []string{`http_filters[0] (mutate): typed_config.mutations.request_mutations[1]: removing "X-A" after adding it`}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			s, err := LoadBootstrapFile(filepath.Join("testdata", "bad", tt.file))
			if err == nil {
				t.Fatalf("got a snapshot with %d listeners, want an error", len(s.Listeners))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "xds: testdata/bad/"+tt.file) {
				t.Errorf("error %q does not start with the package and file", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n  %s\ndoes not contain\n  %s", msg, w)
				}
			}
			if got := errors.Is(err, ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v, want %v", got, tt.unsupported)
			}
		})
	}
}

func TestLoadBootstrapInputErrors(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"empty", "", "xds: x.yaml: empty bootstrap"},
		{"null", "null\n", "xds: x.yaml: empty bootstrap"},
		{"yaml", "static_resources: [\n", "xds: x.yaml: yaml: line"},
		{"not an object", "[1, 2]", "xds: x.yaml:1:1: "},
		{"wrong type", "admin: {address: 5}", `xds: x.yaml: admin.address: `},
		{"any without type", `static_resources: {listeners: [{name: a, address: {socket_address: {address: 0.0.0.0, port_value: 1}}, listener_filters: [{name: x, typed_config: {}}]}]}`,
			`xds: x.yaml: listener "a": listener_filters[0] (x): typed_config: invalid type URL ""`},
		{"listener without address", `static_resources: {listeners: [{name: a}]}`, `xds: x.yaml: listener "a": address: address is required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadBootstrap([]byte(tt.data), "x.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := LoadBootstrapFile("testdata/does-not-exist.yaml"); err == nil || !strings.HasPrefix(err.Error(), "xds: open testdata/does-not-exist.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestLoadBootstrapFull(t *testing.T) {
	s, err := LoadBootstrapFile("testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Source != "testdata/good/full.yaml" || len(s.Version) != 16 {
		t.Errorf("source %q version %q", s.Source, s.Version)
	}
	eq(t, "admin", *s.Admin, config.Admin{Address: "[::1]:9901", AccessLogPath: "/tmp/admin_access.log"})

	if len(s.Listeners) != 1 {
		t.Fatalf("%d listeners", len(s.Listeners))
	}
	l := s.Listeners[0]
	eq(t, "listener name", l.Name, "public")
	eq(t, "listener address", l.Address, "0.0.0.0:8080")
	eq(t, "buffer limit", l.PerConnectionBufferLimit, 32768)
	fc := l.FilterChains[0]
	eq(t, "chain name", fc.Name, "api")
	m := fc.Match
	eq(t, "destination port", m.DestinationPort, uint32(8080))
	eqSlice(t, "server names", m.ServerNames, []string{"api.example.com", "*.api.example.com"})
	eq(t, "transport", m.TransportProtocol, "raw_buffer")
	eqSlice(t, "alpn", m.ApplicationProtocols, []string{"http/1.1", "h2c"})
	eqSlice(t, "prefix ranges", m.PrefixRanges, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	eqSlice(t, "source prefix ranges", m.SourcePrefixRanges, []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")})

	h := fc.HTTP
	eq(t, "stat prefix", h.StatPrefix, "api")
	eq(t, "codec", h.Codec, config.CodecHTTP2)
	eq(t, "server name", h.ServerName, "sluice-test")
	eq(t, "use remote address", h.UseRemoteAddress, true)
	eq(t, "xff hops", h.XFFNumTrustedHops, uint32(2))
	eq(t, "skip xff", h.SkipXFFAppend, true)
	eq(t, "generate request id", h.GenerateRequestID, false)
	eq(t, "preserve request id", h.PreserveExternalRequestID, true)
	eq(t, "max header bytes", h.MaxRequestHeadersBytes, 96*1024)
	eq(t, "stream idle", h.StreamIdleTimeout, 30*time.Second)
	eq(t, "request timeout", h.RequestTimeout, time.Minute)
	eq(t, "request headers timeout (explicit 0 disables)", h.RequestHeadersTimeout, time.Duration(0))
	eq(t, "drain", h.DrainTimeout, 2*time.Second)
	eq(t, "idle", h.IdleTimeout, 2*time.Minute)
	eq(t, "max connection duration", h.MaxConnectionDuration, 10*time.Minute)
	eq(t, "max headers", h.MaxHeadersCount, 50)
	eq(t, "max requests", h.MaxRequestsPerConnection, 1000)
	eqSlice(t, "access logs", derefs(h.AccessLogs), []config.AccessLog{
		{Path: "/var/log/sluice/access.log", Format: "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\n"},
		{Path: "/var/log/sluice/legacy.log", Format: "%PROTOCOL%\n"},
		{Path: "/dev/stderr"},
	})

	if len(h.HTTPFilters) != 2 {
		t.Fatalf("%d HTTP filters, want 2 (the router is dropped)", len(h.HTTPFilters))
	}
	hm := h.HTTPFilters[0]
	eq(t, "hm name", hm.Name, "add-headers")
	eq(t, "hm type", hm.TypeURL, config.TypeHeaderMutation)
	hmc, ok := hm.Config.(*config.HeaderMutationConfig)
	if !ok {
		t.Fatalf("header mutation config is %T", hm.Config)
	}
	eqSlice(t, "hm request remove", hmc.RequestHeadersToRemove, []string{"x-internal"})
	eqSlice(t, "hm request add", hmc.RequestHeadersToAdd, []config.HeaderValueOption{{Key: "x-proxy", Value: "sluice", Action: config.OverwriteIfExistsOrAdd}})
	eqSlice(t, "hm response add", hmc.ResponseHeadersToAdd, []config.HeaderValueOption{{Key: "x-served-by", Value: "sluice"}})
	lua := h.HTTPFilters[1]
	eq(t, "lua type", lua.TypeURL, "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua")
	eq(t, "lua optional", lua.Optional, true)
	eq(t, "lua disabled", lua.Disabled, true)
	if lc, ok := lua.Config.(*luav3.Lua); !ok || !strings.Contains(lc.GetDefaultSourceCode().GetInlineString(), "envoy_on_request") {
		t.Errorf("lua config %T %v", lua.Config, lua.Config)
	}

	rc := h.RouteConfig
	eq(t, "route config name", rc.Name, "api_routes")
	eqSlice(t, "table request add", rc.RequestHeadersToAdd, []config.HeaderValueOption{{Key: "x-table", Value: "api"}})
	eqSlice(t, "table response remove", rc.ResponseHeadersToRemove, []string{"x-powered-by"})
	vh := rc.VirtualHosts[0]
	eqSlice(t, "domains", vh.Domains, []string{"api.example.com", "*.api.example.com"})
	eqSlice(t, "vhost add (append: false)", vh.RequestHeadersToAdd, []config.HeaderValueOption{{Key: "x-vhost", Value: "api", Action: config.OverwriteIfExistsOrAdd}})
	eqSlice(t, "vhost retry on", vh.RetryPolicy.RetryOn, []string{"5xx", "connect-failure"})
	eq(t, "vhost retries", vh.RetryPolicy.NumRetries, uint32(1))
	eq(t, "vhost lua override", *vh.TypedPerFilterConfig["lua"], config.FilterOverride{Disabled: true})

	routes := map[string]*config.Route{}
	for _, r := range vh.Routes {
		routes[r.Name] = r
	}
	exact := routes["exact"]
	eq(t, "exact path", exact.Match.Path, "/exact")
	eq(t, "case insensitive", exact.Match.CaseInsensitive, true)
	eqSlice(t, "header matchers", derefMatchers(exact.Match.Headers), []string{
		"x-a exact a false", "x-b prefix b false", "x-c suffix c false", "x-d contains d false",
		"x-e regex ^e+$ false", "x-f present=true", "x-g prefix G true invert", "x-h present=true",
	})
	if q := exact.Match.QueryParameters; len(q) != 2 || q[0].Name != "q" || *q[0].Match != (config.StringMatcher{Value: "1"}) ||
		q[1].Name != "p" || q[1].Match != nil {
		t.Errorf("query parameters %+v", q)
	}
	a := exact.Action
	eq(t, "cluster", a.Cluster, "ring")
	eq(t, "timeout 0s disables", a.Timeout, time.Duration(0))
	eq(t, "route idle", a.IdleTimeout, 10*time.Second)
	eq(t, "prefix rewrite", a.PrefixRewrite, "/v1/")
	eq(t, "host rewrite", a.HostRewriteLiteral, "backend.internal")
	rp := a.RetryPolicy
	eqSlice(t, "retry on", rp.RetryOn, []string{"retriable-status-codes", "reset"})
	eq(t, "num retries", rp.NumRetries, uint32(3))
	eq(t, "per try", rp.PerTryTimeout, 2*time.Second)
	eqSlice(t, "retriable codes", rp.RetriableStatusCodes, []uint32{502, 503})
	eq(t, "other hosts", rp.RetryOtherHosts, true)
	eq(t, "host selection attempts", rp.HostSelectionRetryMaxAttempts, 5)
	eq(t, "backoff base", rp.BackoffBase, 100*time.Millisecond)
	eq(t, "backoff max", rp.BackoffMax, time.Second)
	eqSlice(t, "hash policy", a.HashPolicy, []config.HashPolicy{
		{Header: "x-user"}, {SourceIP: true, Terminal: true}, {QueryParameter: "session"}, {Cookie: "sid"},
	})
	eqSlice(t, "mirror", a.MirrorPolicy, []config.MirrorPolicy{{Cluster: "maglev", Percent: 25}})

	re := routes["regex"]
	eq(t, "safe regex", re.Match.SafeRegex, "/items/[0-9]+")
	eq(t, "cluster header", re.Action.ClusterHeader, "x-cluster")
	eq(t, "regex rewrite", *re.Action.RegexRewrite, config.RegexRewrite{Pattern: "^/items/([0-9]+)$", Substitution: `/item?id=\1`})
	eq(t, "host rewrite header", re.Action.HostRewriteHeader, "x-host")
	eq(t, "default route timeout", re.Action.Timeout, 15*time.Second)

	split := routes["split"]
	eq(t, "path separated prefix", split.Match.PathSeparatedPrefix, "/split")
	eqSlice(t, "route remove", split.RequestHeadersToRemove, []string{"x-remove-me"})
	eq(t, "auto host rewrite", split.Action.AutoHostRewrite, true)
	ov := split.TypedPerFilterConfig["add-headers"]
	if ov == nil || ov.TypeURL != config.TypeHeaderMutationPerRoute {
		t.Fatalf("header mutation override %+v", ov)
	}
	if c, ok := ov.Config.(*config.HeaderMutationConfig); !ok || len(c.RequestHeadersToAdd) != 1 || c.RequestHeadersToAdd[0].Key != "x-route" {
		t.Errorf("header mutation override config %#v", ov.Config)
	}
	wc := split.Action.WeightedClusters
	if len(wc) != 2 {
		t.Fatalf("%d weighted clusters", len(wc))
	}
	eq(t, "wc0", wc[0].Name+"/"+itoa(wc[0].Weight), "ring/80")
	eqSlice(t, "wc0 response add", wc[0].ResponseHeadersToAdd, []config.HeaderValueOption{{Key: "x-branch", Value: "ring", Action: config.AddIfAbsent}})
	eq(t, "wc1", wc[1].Name+"/"+itoa(wc[1].Weight), "maglev/20")
	eq(t, "wc1 lua enabled", *wc[1].TypedPerFilterConfig["lua"], config.FilterOverride{})

	eq(t, "redirect", *routes["redirect"].Redirect, config.Redirect{SchemeRedirect: "https", HostRedirect: "new.example.com",
		PortRedirect: 8443, PrefixRewrite: "/new/", ResponseCode: 308, StripQuery: true})
	eq(t, "direct response", *routes["teapot"].DirectResponse, config.DirectResponse{Status: 418, Body: "I'm a teapot"})
	eqSlice(t, "grpc match", derefMatchers(routes["grpc"].Match.Headers), []string{"content-type prefix application/grpc false"})

	dc := l.DefaultFilterChain
	if dc == nil || dc.HTTP.RDSName != "dynamic_routes" || dc.HTTP.RouteConfig != nil {
		t.Errorf("default filter chain %+v", dc)
	}

	clusters := map[string]*config.Cluster{}
	for _, c := range s.Clusters {
		clusters[c.Name] = c
	}
	ring := clusters["ring"]
	eq(t, "ring type", ring.Type, "STRICT_DNS")
	eq(t, "ring lb", ring.LBPolicy, config.LBRingHash)
	eq(t, "ring sizes", [2]uint64{ring.RingHashMinSize, ring.RingHashMaxSize}, [2]uint64{2048, 4096})
	eq(t, "default connect timeout", ring.ConnectTimeout, 5*time.Second)
	eqSlice(t, "ring endpoints", derefs(ring.Endpoints), []config.Endpoint{
		{Address: "backend-a.internal:80", Weight: 3, Healthy: true},
		{Address: "backend-b.internal:80", Weight: 1, Healthy: false},
		{Address: "backend-c.internal:8080", Weight: 1, Priority: 1, Healthy: true},
	})
	eq(t, "circuit breakers", ring.CircuitBreakers, config.CircuitBreakers{MaxConnections: 100, MaxPendingRequests: 1024,
		MaxRequests: 200, MaxRetries: 3, RetryBudgetPercent: 25.5, MinRetryConcurrency: 5})
	eq(t, "ring protocol", ring.Protocol, "http2")
	eq(t, "ring idle", ring.IdleTimeout, 30*time.Second)
	eq(t, "ring max requests", ring.MaxRequestsPerConnection, 100)

	mg := clusters["maglev"]
	eq(t, "maglev", [3]any{mg.Type, mg.LBPolicy, mg.MaglevTableSize}, [3]any{"STATIC", config.LBMaglev, uint64(1009)})
	eq(t, "maglev connect timeout", mg.ConnectTimeout, 250*time.Millisecond)
	eq(t, "maglev protocol (deprecated field)", mg.Protocol, "http2")
	eq(t, "maglev max requests (deprecated field)", mg.MaxRequestsPerConnection, 7)
	eq(t, "maglev idle default", mg.IdleTimeout, time.Hour)
	eq(t, "maglev endpoint", mg.Endpoints[0].Address, "[2001:db8::1]:443")
	eq(t, "default breakers", mg.CircuitBreakers, config.DefaultCircuitBreakers())

	eds := clusters["eds"]
	eq(t, "eds", [4]any{eds.Type, eds.LBPolicy, eds.LeastRequestCount, len(eds.Endpoints)}, [4]any{"EDS", config.LBLeastRequest, 4, 0})
	eq(t, "eds protocol", eds.Protocol, "http1")
}

func TestLoadBootstrapRDSAndCDS(t *testing.T) {
	// JSON, camelCase names, RDS, and clusters that also come from CDS: an
	// inline route may name a cluster the bootstrap does not define.
	s, err := LoadBootstrapFile("testdata/good/rds.json")
	if err != nil {
		t.Fatal(err)
	}
	if s.Admin != nil {
		t.Errorf("admin %+v, want none", s.Admin)
	}
	h := s.Listeners[0].FilterChains[0].HTTP
	eq(t, "rds name", h.RDSName, "routes")
	eq(t, "codec", h.Codec, config.CodecHTTP1)
	if h.RouteConfig != nil || len(h.HTTPFilters) != 0 {
		t.Errorf("route config %v filters %v", h.RouteConfig, h.HTTPFilters)
	}
	eq(t, "inline cluster from CDS", s.Listeners[1].FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes[0].Action.Cluster, "from_cds")
	eq(t, "xds cluster protocol", s.Clusters[0].Protocol, "http2")
}

// TestLoadSample loads the runnable sample and checks what its README
// promises.
func TestLoadSample(t *testing.T) {
	path := filepath.Join("..", "samples", "static", "envoy.yaml")
	s, err := LoadBootstrapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "admin", s.Admin.Address, "127.0.0.1:9901")
	if len(s.Listeners) != 1 {
		t.Fatalf("%d listeners", len(s.Listeners))
	}
	l := s.Listeners[0]
	eq(t, "listener address", l.Address, "127.0.0.1:10000")
	h := l.FilterChains[0].HTTP
	eq(t, "codec", h.Codec, config.CodecAuto)
	if len(h.HTTPFilters) != 0 {
		t.Errorf("HTTP filters %v, want none (the router is dropped)", h.HTTPFilters)
	}
	vhs := h.RouteConfig.VirtualHosts
	if len(vhs) != 1 || !slices.Equal(vhs[0].Domains, []string{"*"}) {
		t.Fatalf("virtual hosts %+v", vhs)
	}
	r := vhs[0].Routes
	if len(r) != 4 {
		t.Fatalf("%d routes, want 4", len(r))
	}
	eq(t, "v2 match", r[0].Match.Headers, []config.HeaderMatcher{{Name: "x-version", Match: &config.StringMatcher{Kind: config.MatchExact, Value: "v2"}}})
	eq(t, "v2 cluster", r[0].Action.Cluster, "service_v2")
	eq(t, "api prefix", r[1].Match.Prefix, "/api/")
	eq(t, "api cluster", r[1].Action.Cluster, "service_api")
	eq(t, "healthz path", r[2].Match.Path, "/healthz")
	eq(t, "healthz response", *r[2].DirectResponse, config.DirectResponse{Status: 200, Body: "ok\n"})
	eq(t, "fallback prefix", r[3].Match.Prefix, "/")
	eq(t, "fallback cluster", r[3].Action.Cluster, "service_api")
	eqSlice(t, "fallback header", r[3].ResponseHeadersToAdd, []config.HeaderValueOption{{Key: "x-sluice-route", Value: "fallback"}})

	want := map[string]string{"service_api": "127.0.0.1:10081", "service_v2": "127.0.0.1:10082"}
	if len(s.Clusters) != len(want) {
		t.Fatalf("%d clusters", len(s.Clusters))
	}
	for _, c := range s.Clusters {
		if len(c.Endpoints) != 1 || c.Endpoints[0].Address != want[c.Name] || c.Type != "STATIC" || c.LBPolicy != config.LBRoundRobin {
			t.Errorf("cluster %s: %+v", c.Name, c)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := LoadBootstrap(data, path)
	if err != nil || s2.Version != s.Version {
		t.Errorf("reload: version %q vs %q, err %v", s2.Version, s.Version, err)
	}
}
