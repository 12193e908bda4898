package xds

import (
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

var (
	corsPolicyFields = knownFields(&corsv3.CorsPolicy{}, "allow_origin_string_match", "allow_methods",
		"allow_headers", "expose_headers", "max_age", "allow_credentials", "filter_enabled", "shadow_enabled",
		"allow_private_network_access", "forward_not_matching_preflights")
	// runtime_key is accepted: without a runtime, a share is its
	// default_value, as in an Envoy whose runtime lacks the key.
	runtimeFractionFields   = knownFields(&corev3.RuntimeFractionalPercent{}, "default_value", "runtime_key")
	fractionalPercentFields = knownFields(&typev3.FractionalPercent{}, "numerator", "denominator")
)

// errDeprecatedCORS refuses VirtualHost.cors and RouteAction.cors, Envoy's
// deprecated policies: they apply to whatever the CORS filter is named,
// which a route table cannot know (Istio sends typed_per_filter_config).
var errDeprecatedCORS = inField(fmt.Errorf("the deprecated policy field is %w: set an envoy.extensions.filters.http.cors.v3.CorsPolicy in typed_per_filter_config instead", ErrUnsupported), "cors")

// corsPolicy checks a CorsPolicy, the per virtual host or per route config
// of the CORS filter. It stays a proto: the native filter
// (engine/filters/cors) compiles it, and merges a route's over its virtual
// host's, when the config is applied; checking here names the field in
// the NACK.
func corsPolicy(m *corsv3.CorsPolicy) error {
	if err := corsPolicyFields.check(m); err != nil {
		return err
	}
	for i, sm := range m.GetAllowOriginStringMatch() {
		if _, err := stringMatcher(sm); err != nil {
			return inIndex(err, "allow_origin_string_match", i)
		}
	}
	if err := runtimeFraction(m.GetFilterEnabled()); err != nil {
		return inField(err, "filter_enabled")
	}
	return inField(runtimeFraction(m.GetShadowEnabled()), "shadow_enabled")
}

func runtimeFraction(rf *corev3.RuntimeFractionalPercent) error {
	if rf == nil {
		return nil
	}
	if err := runtimeFractionFields.check(rf); err != nil {
		return err
	}
	if rf.GetDefaultValue() == nil {
		return inField(errors.New("a value is required"), "default_value")
	}
	return inField(fractionalPercentFields.check(rf.GetDefaultValue()), "default_value")
}
