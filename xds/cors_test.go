package xds

import (
	"errors"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/config"
)

const corsTypeURL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"

// istioCORSRoutes is the RDS table Istio sends for a VirtualService with a
// corsPolicy on one route (and, as Envoy allows, a policy per virtual
// host); %s is spliced into the route's policy.
const istioCORSRoutes = `
name: "8080"
virtual_hosts:
- name: app.default.svc.cluster.local:8080
  domains: ["app.default.svc.cluster.local", "app"]
  typed_per_filter_config:
    envoy.filters.http.cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_origin_string_match: [{ suffix: .example.com }]
  routes:
  - name: cors
    match: { prefix: /api }
    route: { cluster: "outbound|8080||app.default.svc.cluster.local" }
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{ exact: https://a.example }, { safe_regex: { regex: 'https://.*\.b\.example' } }]
        allow_methods: GET,POST
        allow_headers: authorization
        expose_headers: x-request-id
        max_age: "86400"
        allow_credentials: true
        filter_enabled: { default_value: { numerator: 100 } }
        forward_not_matching_preflights: false%s
  - name: wrapped
    match: { prefix: /wrapped }
    route: { cluster: "outbound|8080||app.default.svc.cluster.local" }
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
          allow_origin_string_match: [{ prefix: "https://" }]
          shadow_enabled: { default_value: { numerator: 10, denominator: TEN_THOUSAND }, runtime_key: cors.shadow }
`

func corsRoutes(t testing.TB, extra string) *routev3.RouteConfiguration {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(strings.Replace(istioCORSRoutes, "%s", extra, 1)))
	if err != nil {
		t.Fatal(err)
	}
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal(js, rc); err != nil {
		t.Fatal(err)
	}
	return rc
}

// corsListener is listener "cors": the CORS filter and routes with
// policies inline (a seed of FuzzTranslateResources).
func corsListener(t testing.TB) *listenerv3.Listener {
	l := listenerWith(t, &hcmv3.HttpConnectionManager{
		StatPrefix:     "cors",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: corsRoutes(t, "")},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.cors", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &corsv3.Cors{})}},
			routerFilter(t),
		},
	})
	l.Name, l.Address = "cors", socket("127.0.0.1", 10005)
	return l
}

// Istio's shape: an empty Cors filter in every connection manager stays in
// the chain, and the CorsPolicy of a virtual host or route (also inside a
// FilterConfig) reaches the filter's compiler as it is.
func TestTranslateIstioCORS(t *testing.T) {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "inbound_0.0.0.0_8080",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "8080", ConfigSource: adsSrc()}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.cors", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &corsv3.Cors{})}},
			routerFilter(t),
		},
	}
	l, err := TranslateListener(listenerWith(t, hcm))
	if err != nil {
		t.Fatal(err)
	}
	hfs := l.FilterChains[0].HTTP.HTTPFilters
	if len(hfs) != 1 || hfs[0].Name != "envoy.filters.http.cors" || hfs[0].TypeURL != corsTypeURL {
		t.Fatalf("HTTP filters %+v, want the CORS filter", hfs)
	}
	if _, ok := hfs[0].Config.(*corsv3.Cors); !ok {
		t.Errorf("filter config %T", hfs[0].Config)
	}

	rc, err := TranslateRouteConfiguration(corsRoutes(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	vh := rc.VirtualHosts[0]
	policy := func(where string, m map[string]*config.FilterOverride) *corsv3.CorsPolicy {
		t.Helper()
		fo := m["envoy.filters.http.cors"]
		if fo == nil || fo.Disabled || fo.TypeURL != "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy" {
			t.Fatalf("%s: override %+v", where, fo)
		}
		p, ok := fo.Config.(*corsv3.CorsPolicy)
		if !ok {
			t.Fatalf("%s: config %T", where, fo.Config)
		}
		return p
	}
	eq(t, "virtual host origins", policy("virtual host", vh.TypedPerFilterConfig).GetAllowOriginStringMatch()[0].GetSuffix(), ".example.com")
	rp := policy("route", vh.Routes[0].TypedPerFilterConfig)
	eq(t, "route methods", rp.GetAllowMethods(), "GET,POST")
	eq(t, "route credentials", rp.GetAllowCredentials().GetValue(), true)
	eq(t, "route forward_not_matching_preflights", rp.GetForwardNotMatchingPreflights().GetValue(), false)
	if _, err := TranslateListener(corsListener(t)); err != nil {
		t.Errorf("inline routes: %v", err)
	}
	eq(t, "wrapped shadow", policy("wrapped route", vh.Routes[1].TypedPerFilterConfig).GetShadowEnabled().GetDefaultValue().GetNumerator(), uint32(10))
}

// A policy the filter cannot honour is refused, naming where it is: the
// route table (an RDS response) is NACKed.
func TestTranslateCORSErrors(t *testing.T) {
	const where = `xds: route_config "8080": virtual_host "app.default.svc.cluster.local:8080": route "cors": typed_per_filter_config[envoy.filters.http.cors].`
	for _, tt := range []struct{ extra, want string }{
		{"\n        allow_origin_string_match: [{ custom: { name: acme, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } }]", where + "allow_origin_string_match[0].custom: not supported yet"},
		{"\n        allow_origin_string_match: [{ safe_regex: { regex: '(' } }]", where + "allow_origin_string_match[0].safe_regex.regex: invalid regex"},
		{"\n        shadow_enabled: { default_value: { numerator: 1, denominator: 3 } }", where + "shadow_enabled.default_value.denominator: value must be one of the defined enum values"},
	} {
		rc := corsRoutes(t, "")
		// Replace the route's policy by one with the bad field.
		extra := corsRoutes(t, tt.extra).GetVirtualHosts()[0].GetRoutes()[0].GetTypedPerFilterConfig()
		rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig = extra
		_, err := TranslateRouteConfiguration(rc)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s:\n  error %v\n  want  %s", tt.extra, err, tt.want)
		}
		if strings.HasSuffix(tt.want, "not supported yet") && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%v does not wrap ErrUnsupported", err)
		}
	}

	// Over ADS: the bad table fails the assembly, which the client NACKs.
	l := dynListener(t, 10004, "8080")
	l.Name = "cors"
	bad := corsRoutes(t, "\n        allow_origin_string_match: [{ custom: { name: acme, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } } }]")
	as := &assembler{dynamicClusters: true}
	_, err := as.assemble(viewAt(testStore(t, proto.Message(l), headerMutation(t, "1"), bad), 0), nil)
	if err == nil || !strings.Contains(err.Error(), `route "cors": typed_per_filter_config[envoy.filters.http.cors].allow_origin_string_match[0].custom: not supported yet`) {
		t.Errorf("ADS: %v", err)
	}

	// Envoy's deprecated policy fields are refused, saying what to use.
	rc := corsRoutes(t, "")
	rc.VirtualHosts[0].Cors = &routev3.CorsPolicy{AllowMethods: "GET"}
	_, err = TranslateRouteConfiguration(rc)
	if err == nil || !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `virtual_host "app.default.svc.cluster.local:8080": cors: the deprecated policy field is not supported yet: set an envoy.extensions.filters.http.cors.v3.CorsPolicy in typed_per_filter_config`) {
		t.Errorf("VirtualHost.cors: %v", err)
	}
	rc = corsRoutes(t, "")
	rc.VirtualHosts[0].Routes[1].GetRoute().Cors = &routev3.CorsPolicy{AllowMethods: "GET"}
	if _, err = TranslateRouteConfiguration(rc); err == nil || !strings.Contains(err.Error(), `route "wrapped": route.cors: the deprecated policy field`) {
		t.Errorf("RouteAction.cors: %v", err)
	}
}
