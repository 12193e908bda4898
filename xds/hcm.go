package xds

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	compressorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/compressor/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	grpcstatsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Defaults of the HTTP connection manager. They are Envoy's, except
// RequestHeadersTimeout.
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	// Envoy disables request_headers_timeout when unset, which leaves a
	// slowloris hole; Sluice bounds the header block to 10s unless the
	// config sets it (an explicit 0s disables it, as in Envoy).
	defaultRequestHeadersTimeout = 10 * time.Second
	defaultHTTPIdleTimeout       = time.Hour
	defaultDrainTimeout          = 5 * time.Second
	defaultMaxRequestHeadersKB   = 60
	defaultMaxHeadersCount       = 100
)

var (
	hcmFields = knownFields(&hcmv3.HttpConnectionManager{},
		"codec_type", "stat_prefix", "rds", "route_config", "http_filters", "common_http_protocol_options",
		"server_name", "max_request_headers_kb", "stream_idle_timeout", "request_timeout",
		"request_headers_timeout", "drain_timeout", "access_log", "use_remote_address", "xff_num_trusted_hops",
		"skip_xff_append", "generate_request_id", "preserve_external_request_id", "http2_protocol_options",
		// Checked below: only their default or no-op values are accepted.
		"add_user_agent", "path_with_escaped_slashes_action",
		// Applied by native filters put first in the chain (see
		// hcmFeatureFilters); upgrade_configs is checked below: the engine
		// forwards upgrades (websocket) anyway.
		"normalize_path", "merge_slashes", "forward_client_cert_details", "set_current_client_cert_details",
		"upgrade_configs",
		// Ignored: it only tunes how request IDs feed trace sampling
		// (checked to be the UUID extension, Sluice's own behaviour).
		"request_id_extension",
		// Ignored: Sluice's codecs answer "Expect: 100-continue" themselves
		// when the proxy first reads the body, and drop the header and
		// upstream 100s, which is Envoy's behaviour without the option;
		// with it Envoy would pass the Expect upstream and relay the
		// upstream's 100. The request and its response are the same either
		// way (the upstream only loses the chance to refuse a body before
		// it is sent). Istio sets it on every connection manager it sends
		// (seen in xds/testdata/istio-generated).
		"proxy_100_continue",
		// Ignored: tracing and access log flushing (observability), codec
		// and connection tuning.
		"tracing", "access_log_flush_interval", "flush_access_log_on_new_request", "access_log_options",
		"record_route_resolution_stats", "http_protocol_options",
		"delayed_close_timeout", "stream_flush_timeout", "drain_timeout_jitter",
		"http1_safe_max_connection_duration", "stream_error_on_invalid_http_message",
		"internal_address_config")
	// max_connection_duration_jitter and max_response_headers_kb (upstream
	// only) are ignored.
	hcmProtocolFields = knownFields(&corev3.HttpProtocolOptions{},
		"idle_timeout", "max_connection_duration", "max_headers_count", "max_requests_per_connection",
		"max_connection_duration_jitter", "max_response_headers_kb")
	rdsFields = knownFields(&hcmv3.Rds{}, "config_source", "route_config_name")
	// enabled is checked below; filters on upgrades are not supported.
	upgradeConfigFields = knownFields(&hcmv3.HttpConnectionManager_UpgradeConfig{}, "upgrade_type", "enabled")
	certDetailsFields   = knownFields(&hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{}, "subject", "cert", "chain", "dns", "uri")
	requestIDFields     = knownFields(&corev3.TypedExtensionConfig{}, "name", "typed_config")
	httpFilterFields    = knownFields(&hcmv3.HttpFilter{}, "name", "typed_config", "config_discovery", "is_optional", "disabled")
	// Router: its options tune stats, tracing, upstream logs and Envoy's
	// own headers, and are ignored; upstream HTTP filters are not supported.
	routerFields = knownFields(&routerv3.Router{}, "dynamic_stats", "start_child_span", "upstream_log",
		"upstream_log_options", "suppress_envoy_headers", "strict_check_headers", "respect_expected_rq_timeout",
		"suppress_grpc_request_failure_code_stats", "reject_connect_request_early_data")
)

func translateHCM(m *hcmv3.HttpConnectionManager, d *deps) (*config.HTTPConnectionManager, error) {
	if err := hcmFields.check(m); err != nil {
		return nil, err
	}
	if boolean(m.GetAddUserAgent(), false) {
		return nil, unsupportedValue("add_user_agent", true)
	}
	if a := m.GetPathWithEscapedSlashesAction(); a != hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT &&
		a != hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		return nil, unsupportedValue("path_with_escaped_slashes_action", a)
	}
	out := &config.HTTPConnectionManager{
		StatPrefix: m.GetStatPrefix(),
		// Envoy writes it over every response's server header (the
		// default server_header_transformation, OVERWRITE; other values
		// are refused, the field being unknown here); Istio names itself
		// istio-envoy, seen on the gateway in
		// xds/testdata/istio-generated/gateway.
		ServerName:                cmp.Or(m.GetServerName(), "envoy"),
		UseRemoteAddress:          boolean(m.GetUseRemoteAddress(), false),
		XFFNumTrustedHops:         m.GetXffNumTrustedHops(),
		SkipXFFAppend:             m.GetSkipXffAppend(),
		GenerateRequestID:         boolean(m.GetGenerateRequestId(), true),
		PreserveExternalRequestID: m.GetPreserveExternalRequestId(),
		MaxRequestHeadersBytes:    int(u32(m.GetMaxRequestHeadersKb(), defaultMaxRequestHeadersKB)) * 1024,
		MaxHeadersCount:           defaultMaxHeadersCount,
	}
	switch c := m.GetCodecType(); c {
	case hcmv3.HttpConnectionManager_AUTO:
		out.Codec = config.CodecAuto
	case hcmv3.HttpConnectionManager_HTTP1:
		out.Codec = config.CodecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		out.Codec = config.CodecHTTP2
	default:
		return nil, unsupportedValue("codec_type", c)
	}
	var err error
	if out.HTTP2, err = http2Options(m.GetHttp2ProtocolOptions()); err != nil {
		return nil, inField(err, "http2_protocol_options")
	}
	if err := hcmTimeouts(m, out); err != nil {
		return nil, err
	}

	switch rs := m.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if err := rdsFields.check(rs.Rds); err != nil {
			return nil, inField(err, "rds")
		}
		out.RDSName = rs.Rds.GetRouteConfigName()
		if out.RDSName == "" {
			return nil, inField(errors.New("route_config_name is required"), "rds")
		}
		if err := d.routeConfig(out.RDSName, rs.Rds.GetConfigSource()); err != nil {
			return nil, inField(err, "rds")
		}
	case *hcmv3.HttpConnectionManager_RouteConfig:
		rc, err := translateRouteConfiguration(rs.RouteConfig)
		if err != nil {
			return nil, inField(err, "route_config")
		}
		out.RouteConfig = rc
	case *hcmv3.HttpConnectionManager_ScopedRoutes:
		return nil, unsupported("scoped_routes")
	default:
		return nil, errors.New("one of rds or route_config is required")
	}

	filters, err := translateHTTPFilters(m.GetHttpFilters(), d)
	if err != nil {
		return nil, err
	}
	first, err := hcmFeatureFilters(m)
	if err != nil {
		return nil, err
	}
	out.HTTPFilters = append(first, filters...)
	if out.AccessLogs, err = translateAccessLogs(m.GetAccessLog()); err != nil {
		return nil, err
	}
	return out, nil
}

func hcmTimeouts(m *hcmv3.HttpConnectionManager, out *config.HTTPConnectionManager) error {
	var err error
	if out.StreamIdleTimeout, err = durationField(m.GetStreamIdleTimeout(), defaultStreamIdleTimeout, "stream_idle_timeout"); err != nil {
		return err
	}
	if out.RequestTimeout, err = durationField(m.GetRequestTimeout(), 0, "request_timeout"); err != nil {
		return err
	}
	if out.RequestHeadersTimeout, err = durationField(m.GetRequestHeadersTimeout(), defaultRequestHeadersTimeout, "request_headers_timeout"); err != nil {
		return err
	}
	if out.DrainTimeout, err = durationField(m.GetDrainTimeout(), defaultDrainTimeout, "drain_timeout"); err != nil {
		return err
	}
	out.IdleTimeout = defaultHTTPIdleTimeout
	po := m.GetCommonHttpProtocolOptions()
	if po == nil {
		return nil
	}
	if err := hcmProtocolFields.check(po); err != nil {
		return inField(err, "common_http_protocol_options")
	}
	if out.IdleTimeout, err = durationField(po.GetIdleTimeout(), defaultHTTPIdleTimeout, "idle_timeout"); err != nil {
		return inField(err, "common_http_protocol_options")
	}
	if out.MaxConnectionDuration, err = durationField(po.GetMaxConnectionDuration(), 0, "max_connection_duration"); err != nil {
		return inField(err, "common_http_protocol_options")
	}
	out.MaxHeadersCount = int(u32(po.GetMaxHeadersCount(), defaultMaxHeadersCount))
	out.MaxRequestsPerConnection = int(u32(po.GetMaxRequestsPerConnection(), 0))
	return nil
}

// translateHTTPFilters translates an HCM's http_filters. The router must be
// last and is dropped (the proxy layer is the router); header_mutation
// becomes the native *config.HeaderMutationConfig; any other filter keeps
// its unpacked proto for the compiler registered under its type URL. A
// filter whose ECDS config has not arrived is left out (the listener waits
// for it, see deps), and so are the router checks it could affect.
func translateHTTPFilters(fs []*hcmv3.HttpFilter, d *deps) ([]*config.HTTPFilter, error) {
	var out []*config.HTTPFilter
	router, pending := false, false
	for i, f := range fs {
		hf, isRouter, err := translateHTTPFilter(f, d)
		if err == nil && isRouter && i != len(fs)-1 {
			err = errors.New("the router filter must be the last HTTP filter")
		}
		if err != nil {
			return nil, at(err, segFieldEnd, fmt.Sprintf("http_filters[%d] (%s)", i, f.GetName()))
		}
		switch {
		case isRouter:
			router = true
		case hf == notRun:
		case hf == nil:
			pending = true
		default:
			out = append(out, hf)
		}
	}
	if !router && !pending {
		return nil, inField(errors.New("the router filter (envoy.filters.http.router) is required as the last HTTP filter"), "http_filters")
	}
	return out, nil
}

// notRun is what translateHTTPFilter returns for a filter that is
// accepted and left out of the chain because running it would change
// nothing (see the case that returns it).
var notRun = &config.HTTPFilter{}

// translateHTTPFilter translates one HTTP filter; its config is typed_config
// or, with config_discovery, the ECDS resource named like the filter (nil
// filter, no error: not arrived yet).
func translateHTTPFilter(f *hcmv3.HttpFilter, d *deps) (_ *config.HTTPFilter, isRouter bool, _ error) {
	if err := httpFilterFields.check(f); err != nil {
		return nil, false, err
	}
	a, within := f.GetTypedConfig(), func(err error) error { return inField(err, "typed_config") }
	var typeURLs []string
	if ecs := f.GetConfigDiscovery(); ecs != nil {
		var err error
		if a, within, err = d.extensionConfig(f.GetName(), ecs); err != nil {
			return nil, false, inField(err, "config_discovery")
		}
		if a == nil {
			return nil, false, nil
		}
		cd := within
		within = func(err error) error { return inField(cd(err), "config_discovery") }
		typeURLs = ecs.GetTypeUrls()
	}
	if a == nil {
		// Envoy still resolves a config-less router by its name.
		if f.GetName() == "envoy.filters.http.router" {
			return nil, true, nil
		}
		return nil, false, errors.New("typed_config is required")
	}
	if rs, ok, err := rulesSource(a); ok || err != nil {
		// The Sluice rule language, as source text in a TypedStruct.
		if err != nil {
			return nil, false, within(err)
		}
		return &config.HTTPFilter{Name: f.GetName(), TypeURL: config.TypeRulesSource, Config: rs,
			Disabled: f.GetDisabled(), Optional: f.GetIsOptional()}, false, nil
	}
	if u, ok, err := istioConfig(a); ok || err != nil {
		if err == nil && typeURLs != nil && !slices.ContainsFunc(typeURLs, func(t string) bool {
			return typePrefix+string((&anypb.Any{TypeUrl: t}).MessageName()) == u.TypeURL
		}) {
			err = fmt.Errorf("type %q is not one of config_discovery.type_urls %q", u.TypeURL, typeURLs)
		}
		if err == nil {
			err = istioHTTPFilter(u, d)
		}
		if err != nil {
			return nil, false, within(err)
		}
		return &config.HTTPFilter{Name: f.GetName(), TypeURL: u.TypeURL, Config: u, Disabled: f.GetDisabled(), Optional: f.GetIsOptional()}, false, nil
	}
	t, err := unpack(a)
	if err != nil {
		if errors.Is(err, errUnknownType) && f.GetIsOptional() {
			// An optional filter this build does not know is skipped by the
			// engine, as Envoy does.
			return &config.HTTPFilter{Name: f.GetName(), TypeURL: typePrefix + string(a.MessageName()),
				Disabled: f.GetDisabled(), Optional: true}, false, nil
		}
		return nil, false, within(err)
	}
	if typeURLs != nil && !slices.ContainsFunc(typeURLs, func(u string) bool {
		return typePrefix+string((&anypb.Any{TypeUrl: u}).MessageName()) == t.url
	}) {
		return nil, false, within(fmt.Errorf("type %q is not one of config_discovery.type_urls %q", t.url, typeURLs))
	}
	hf := &config.HTTPFilter{Name: f.GetName(), TypeURL: t.url, Config: t.msg, Disabled: f.GetDisabled(), Optional: f.GetIsOptional()}
	switch m := t.msg.(type) {
	case *routerv3.Router:
		if err := routerFields.check(m); err != nil {
			return nil, false, within(err)
		}
		return nil, true, nil
	case *grpcstatsv3.FilterConfig:
		// Its per-method gRPC statistics are not kept; it changes no
		// request (emit_filter_state feeds Envoy's access log only).
		return notRun, false, nil
	case *faultv3.HTTPFault:
		// The native fault filter (engine/filters/fault) checks the config
		// when it is compiled. Istio adds it empty to every connection
		// manager and configures faults per route (typed_per_filter_config),
		// so even an empty one stays in the chain: it does nothing on routes
		// without a fault.
	case *compressorv3.Compressor:
		// Compression is the server's choice: an uncompressed response (or
		// request) is always a valid answer to one that allowed
		// compression, so not running the filter changes what is sent only
		// in size. Istio's bootstrap puts a brotli and a zstd compressor on
		// its prometheus listener (15090) (xds/testdata/istio-generated).
		return notRun, false, nil
	case *corsv3.Cors:
		// The native CORS filter (engine/filters/cors). Its config has no
		// fields: the policies come per virtual host or route
		// (typed_per_filter_config, see corsPolicy), so it stays in the
		// chain; it does nothing on routes without a policy.
		if !proto.Equal(m, &corsv3.Cors{}) {
			return nil, false, within(fmt.Errorf("cors: unknown fields are %w", ErrUnsupported))
		}
	case *headermutationv3.HeaderMutation:
		hm, err := headerMutationFilter(m.GetMutations())
		if err != nil {
			return nil, false, within(err)
		}
		if m.GetMostSpecificHeaderMutationsWins() {
			return nil, false, within(unsupportedValue("most_specific_header_mutations_wins", true))
		}
		hf.TypeURL = config.TypeHeaderMutation
		hf.Config = hm
	}
	return hf, false, nil
}

// hcmFeatureFilters returns the native filters that apply connection
// manager features Envoy applies before any HTTP filter: path
// normalization (normalize_path, merge_slashes) and the
// x-forwarded-client-cert header (forward_client_cert_details with
// set_current_client_cert_details). It also checks upgrade_configs and
// request_id_extension.
func hcmFeatureFilters(m *hcmv3.HttpConnectionManager) ([]*config.HTTPFilter, error) {
	var out []*config.HTTPFilter
	np := &config.NormalizePathConfig{Normalize: boolean(m.GetNormalizePath(), false), MergeSlashes: m.GetMergeSlashes()}
	if np.Normalize || np.MergeSlashes {
		out = append(out, &config.HTTPFilter{Name: "normalize_path", TypeURL: config.TypeNormalizePath, Config: np})
	}
	if mode := m.GetForwardClientCertDetails(); mode != hcmv3.HttpConnectionManager_SANITIZE || m.GetSetCurrentClientCertDetails() != nil {
		// SANITIZE, the default, is only applied when details are set:
		// without this filter an incoming header is forwarded as is.
		fc := &config.ForwardClientCertConfig{Mode: mode.String()}
		if cd := m.GetSetCurrentClientCertDetails(); cd != nil {
			if err := certDetailsFields.check(cd); err != nil {
				return nil, inField(err, "set_current_client_cert_details")
			}
			fc.Subject, fc.Cert, fc.Chain, fc.DNS, fc.URI = boolean(cd.GetSubject(), false), cd.GetCert(), cd.GetChain(), cd.GetDns(), cd.GetUri()
		}
		out = append(out, &config.HTTPFilter{Name: "forward_client_cert", TypeURL: config.TypeForwardClientCert, Config: fc})
	}
	for i, uc := range m.GetUpgradeConfigs() {
		if err := upgradeConfigFields.check(uc); err != nil {
			return nil, inIndex(err, "upgrade_configs", i)
		}
		if !strings.EqualFold(uc.GetUpgradeType(), "websocket") {
			return nil, inIndex(unsupportedValue("upgrade_type", uc.GetUpgradeType()), "upgrade_configs", i)
		}
		if !boolean(uc.GetEnabled(), true) {
			return nil, inIndex(unsupportedValue("enabled", false), "upgrade_configs", i)
		}
	}
	if rid := m.GetRequestIdExtension(); rid != nil {
		if rid.GetTypedConfig() != nil {
			t, err := unpack(rid.GetTypedConfig())
			if err != nil {
				return nil, inField(inField(err, "typed_config"), "request_id_extension")
			}
			if t.name() != nameUUIDRequestID {
				return nil, inField(fmt.Errorf("%s: %w", t.url, ErrUnsupported), "request_id_extension")
			}
		}
	}
	return out, nil
}
