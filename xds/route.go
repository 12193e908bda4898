package xds

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Route defaults, Envoy's.
const (
	defaultRouteTimeout = 15 * time.Second
	// Envoy refuses direct response bodies larger than this unless
	// max_direct_response_body_size_bytes raises it.
	defaultMaxDirectResponseBody = 4096
)

var (
	routeConfigFields = knownFields(&routev3.RouteConfiguration{},
		"name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
		"response_headers_to_remove", "max_direct_response_body_size_bytes",
		// Ignored: metadata; validate_clusters, because route tables are
		// always checked against the clusters when those are all static;
		// ignore_port_in_host_matching (Istio sets it), because when no
		// domain matches the host with its port, Sluice already matches
		// it without (see engine/proxy/route's selectVirtualHost).
		"metadata", "validate_clusters", "ignore_port_in_host_matching")
	virtualHostFields = knownFields(&routev3.VirtualHost{},
		"name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "typed_per_filter_config", "retry_policy",
		// Ignored: metadata, virtual cluster stats, buffer limits, and
		// include_request_attempt_count, which Istio sets: the
		// informational x-envoy-attempt-count header is not sent.
		"metadata", "virtual_clusters", "per_request_buffer_limit_bytes", "request_body_buffer_limit",
		"include_request_attempt_count")
	routeFields = knownFields(&routev3.Route{},
		"name", "match", "route", "redirect", "direct_response", "typed_per_filter_config",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
		"response_headers_to_remove", "metadata", // filter_metadata only
		// Ignored: tracing, stats and buffer limits.
		"decorator", "tracing", "stat_prefix", "per_request_buffer_limit_bytes",
		"request_body_buffer_limit")
	routeMatchFields = knownFields(&routev3.RouteMatch{},
		"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers", "query_parameters",
		"grpc")
	routeActionFields = knownFields(&routev3.RouteAction{},
		"cluster", "cluster_header", "weighted_clusters", "prefix_rewrite", "regex_rewrite",
		"host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header", "timeout", "idle_timeout",
		"retry_policy", "request_mirror_policies", "hash_policy",
		// Checked below: what Istio sets (see streamDuration).
		"max_stream_duration", "max_grpc_timeout", "grpc_timeout_offset",
		// Ignored: HIGH priority only selects other circuit breaker
		// thresholds; rate limits are not configured anywhere else.
		"priority", "include_vh_rate_limits")
	weightedClustersFields = knownFields(&routev3.WeightedCluster{}, "clusters", "total_weight",
		// Ignored: there is no runtime.
		"runtime_key_prefix")
	clusterWeightFields = knownFields(&routev3.WeightedCluster_ClusterWeight{},
		"name", "weight", "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
		"response_headers_to_remove", "typed_per_filter_config")
	retryPolicyFields = knownFields(&routev3.RetryPolicy{},
		"retry_on", "num_retries", "per_try_timeout", "retry_host_predicate", "host_selection_retry_max_attempts",
		"retriable_status_codes", "retry_back_off")
	retryHostPredicateFields = knownFields(&routev3.RetryPolicy_RetryHostPredicate{}, "name", "typed_config")
	hashPolicyFields         = knownFields(&routev3.RouteAction_HashPolicy{}, "header", "cookie",
		"connection_properties", "query_parameter", "terminal")
	hashHeaderFields = knownFields(&routev3.RouteAction_HashPolicy_Header{}, "header_name")
	hashCookieFields = knownFields(&routev3.RouteAction_HashPolicy_Cookie{}, "name")
	mirrorFields     = knownFields(&routev3.RouteAction_RequestMirrorPolicy{}, "cluster", "runtime_fraction",
		// Ignored: tracing.
		"trace_sampled")
	directResponseFields = knownFields(&routev3.DirectResponseAction{}, "status", "body")
	redirectFields       = knownFields(&routev3.RedirectAction{}, "https_redirect", "scheme_redirect",
		"host_redirect", "port_redirect", "path_redirect", "prefix_rewrite", "response_code", "strip_query")
)

// TranslateRouteConfiguration checks a RouteConfiguration's validation
// rules and translates it.
func TranslateRouteConfiguration(rc *routev3.RouteConfiguration) (*config.RouteConfiguration, error) {
	if rc == nil {
		return nil, prefixed(errors.New("nil route configuration"))
	}
	if err := validateMsg(rc); err != nil {
		return nil, prefixed(inNamed(err, "route_config", rc.GetName()))
	}
	out, err := translateRouteConfiguration(rc)
	if err != nil {
		return nil, prefixed(inNamed(err, "route_config", rc.GetName()))
	}
	return out, nil
}

func translateRouteConfiguration(rc *routev3.RouteConfiguration) (*config.RouteConfiguration, error) {
	if err := routeConfigFields.check(rc); err != nil {
		return nil, err
	}
	hm, err := headerMutations(headerSource{rc.GetRequestHeadersToAdd(), rc.GetResponseHeadersToAdd(),
		rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToRemove()})
	if err != nil {
		return nil, err
	}
	out := &config.RouteConfiguration{Name: rc.GetName(), HeaderMutations: hm}
	bodyLimit := int(u32(rc.GetMaxDirectResponseBodySizeBytes(), defaultMaxDirectResponseBody))
	domains := map[string]string{}
	for i, vh := range rc.GetVirtualHosts() {
		v, err := translateVirtualHost(vh, bodyLimit)
		if err == nil {
			err = uniqueDomains(domains, v)
		}
		if err != nil {
			return nil, inElem(err, "virtual_hosts", i, "virtual_host", vh.GetName())
		}
		out.VirtualHosts = append(out.VirtualHosts, v)
	}
	return out, nil
}

// uniqueDomains rejects a domain that an earlier virtual host of the same
// table already serves, as Envoy does.
func uniqueDomains(seen map[string]string, vh *config.VirtualHost) error {
	for _, d := range vh.Domains {
		d = strings.ToLower(d)
		if other, dup := seen[d]; dup {
			return fmt.Errorf("domain %q is already served by virtual host %q", d, other)
		}
		seen[d] = vh.Name
	}
	return nil
}

func translateVirtualHost(vh *routev3.VirtualHost, bodyLimit int) (*config.VirtualHost, error) {
	if vh.GetCors() != nil {
		return nil, errDeprecatedCORS
	}
	if err := virtualHostFields.check(vh); err != nil {
		return nil, err
	}
	hm, err := headerMutations(headerSource{vh.GetRequestHeadersToAdd(), vh.GetResponseHeadersToAdd(),
		vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToRemove()})
	if err != nil {
		return nil, err
	}
	out := &config.VirtualHost{Name: vh.GetName(), Domains: slices.Clone(vh.GetDomains()), HeaderMutations: hm}
	if out.TypedPerFilterConfig, err = perFilterConfig(vh.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	if rp := vh.GetRetryPolicy(); rp != nil {
		if out.RetryPolicy, err = retryPolicy(rp); err != nil {
			return nil, inField(err, "retry_policy")
		}
	}
	for i, r := range vh.GetRoutes() {
		cr, err := translateRoute(r, bodyLimit)
		if err != nil {
			return nil, inElem(err, "routes", i, "route", r.GetName())
		}
		out.Routes = append(out.Routes, cr)
	}
	return out, nil
}

func translateRoute(r *routev3.Route, bodyLimit int) (*config.Route, error) {
	if err := routeFields.check(r); err != nil {
		return nil, err
	}
	match, err := routeMatch(r.GetMatch())
	if err != nil {
		return nil, inField(err, "match")
	}
	hm, err := headerMutations(headerSource{r.GetRequestHeadersToAdd(), r.GetResponseHeadersToAdd(),
		r.GetRequestHeadersToRemove(), r.GetResponseHeadersToRemove()})
	if err != nil {
		return nil, err
	}
	out := &config.Route{Name: r.GetName(), Match: match, HeaderMutations: hm}
	if out.TypedPerFilterConfig, err = perFilterConfig(r.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	if fm := r.GetMetadata().GetFilterMetadata(); len(fm) > 0 {
		// What filters read as route metadata (Lua's handle:metadata()).
		out.Metadata = make(map[string]map[string]any, len(fm))
		for ns, st := range fm {
			out.Metadata[ns] = st.AsMap()
		}
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		if out.Action, err = routeAction(a.Route); err != nil {
			return nil, inField(err, "route")
		}
	case *routev3.Route_DirectResponse:
		if out.DirectResponse, err = directResponse(a.DirectResponse, bodyLimit); err != nil {
			return nil, inField(err, "direct_response")
		}
	case *routev3.Route_Redirect:
		if out.Redirect, err = redirect(a.Redirect); err != nil {
			return nil, inField(err, "redirect")
		}
	default:
		return nil, errors.New("one of route, redirect or direct_response is required")
	}
	return out, nil
}

func routeMatch(m *routev3.RouteMatch) (config.RouteMatch, error) {
	var out config.RouteMatch
	if m == nil {
		return out, errors.New("match is required")
	}
	if err := routeMatchFields.check(m); err != nil {
		return out, err
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.Prefix = p.Prefix
		if p.Prefix == "" {
			// "" and "/" both match every path.
			out.Prefix = "/"
		}
	case *routev3.RouteMatch_Path:
		out.Path = p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := regex(p.SafeRegex)
		if err != nil {
			return out, inField(err, "safe_regex")
		}
		out.SafeRegex = re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		out.PathSeparatedPrefix = p.PathSeparatedPrefix
	default:
		return out, errors.New("a path specifier (prefix, path, safe_regex or path_separated_prefix) is required")
	}
	out.CaseInsensitive = !boolean(m.GetCaseSensitive(), true)
	for i, h := range m.GetHeaders() {
		hm, err := headerMatcher(h)
		if err != nil {
			return out, inIndex(err, "headers", i)
		}
		out.Headers = append(out.Headers, hm)
	}
	if m.GetGrpc() != nil {
		// Envoy's gRPC match tests the content type.
		out.Headers = append(out.Headers, config.HeaderMatcher{Name: "content-type",
			Match: &config.StringMatcher{Kind: config.MatchPrefix, Value: "application/grpc"}})
	}
	for i, q := range m.GetQueryParameters() {
		qm, err := queryParameterMatcher(q)
		if err != nil {
			return out, inIndex(err, "query_parameters", i)
		}
		out.QueryParameters = append(out.QueryParameters, qm)
	}
	return out, nil
}

func routeAction(a *routev3.RouteAction) (*config.RouteAction, error) {
	if a.GetCors() != nil {
		return nil, errDeprecatedCORS
	}
	if err := routeActionFields.check(a); err != nil {
		return nil, err
	}
	out := &config.RouteAction{PrefixRewrite: a.GetPrefixRewrite()}
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		out.Cluster = c.Cluster
	case *routev3.RouteAction_ClusterHeader:
		out.ClusterHeader = c.ClusterHeader
	case *routev3.RouteAction_WeightedClusters:
		wcs, err := weightedClusters(c.WeightedClusters)
		if err != nil {
			return nil, inField(err, "weighted_clusters")
		}
		out.WeightedClusters = wcs
	default:
		return nil, errors.New("one of cluster, cluster_header or weighted_clusters is required")
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regex(rr.GetPattern())
		if err != nil {
			return nil, inField(inField(err, "pattern"), "regex_rewrite")
		}
		out.RegexRewrite = &config.RegexRewrite{Pattern: re, Substitution: rr.GetSubstitution()}
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		out.HostRewriteLiteral = h.HostRewriteLiteral
	case *routev3.RouteAction_HostRewriteHeader:
		out.HostRewriteHeader = h.HostRewriteHeader
	case *routev3.RouteAction_AutoHostRewrite:
		out.AutoHostRewrite = h.AutoHostRewrite.GetValue()
	}
	var err error
	if out.Timeout, err = durationField(a.GetTimeout(), defaultRouteTimeout, "timeout"); err != nil {
		return nil, err
	}
	if err := streamDuration(a, out); err != nil {
		return nil, err
	}
	if it := a.GetIdleTimeout(); it != nil {
		if out.IdleTimeout, err = durationField(it, 0, "idle_timeout"); err != nil {
			return nil, err
		}
		if out.IdleTimeout == 0 {
			// config.RouteAction.IdleTimeout 0 means "the connection
			// manager's stream idle timeout applies"; Envoy's explicit 0
			// (no idle timeout at all) has no representation yet.
			return nil, unsupportedValue("idle_timeout", "0s")
		}
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		if out.RetryPolicy, err = retryPolicy(rp); err != nil {
			return nil, inField(err, "retry_policy")
		}
	}
	for i, hp := range a.GetHashPolicy() {
		p, ok, err := hashPolicy(hp)
		if err != nil {
			return nil, inIndex(err, "hash_policy", i)
		}
		if ok {
			out.HashPolicy = append(out.HashPolicy, p)
		}
	}
	for i, mp := range a.GetRequestMirrorPolicies() {
		p, err := mirrorPolicy(mp)
		if err != nil {
			return nil, inIndex(err, "request_mirror_policies", i)
		}
		out.MirrorPolicy = append(out.MirrorPolicy, p)
	}
	return out, nil
}

func weightedClusters(w *routev3.WeightedCluster) ([]*config.WeightedCluster, error) {
	if err := weightedClustersFields.check(w); err != nil {
		return nil, err
	}
	var out []*config.WeightedCluster
	var sum uint64
	for i, cw := range w.GetClusters() {
		wc, err := clusterWeight(cw)
		if err != nil {
			return nil, inElem(err, "clusters", i, "cluster", cw.GetName())
		}
		sum += uint64(wc.Weight)
		out = append(out, wc)
	}
	if sum == 0 {
		return nil, inField(errors.New("the sum of the weights must be more than 0"), "clusters")
	}
	if sum > 1<<32-1 {
		return nil, inField(fmt.Errorf("the sum of the weights (%d) overflows uint32", sum), "clusters")
	}
	if tw := w.GetTotalWeight(); tw != nil && uint64(tw.GetValue()) != sum {
		return nil, inField(fmt.Errorf("%d is not the sum of the weights (%d)", tw.GetValue(), sum), "total_weight")
	}
	return out, nil
}

func clusterWeight(cw *routev3.WeightedCluster_ClusterWeight) (*config.WeightedCluster, error) {
	if err := clusterWeightFields.check(cw); err != nil {
		return nil, err
	}
	if cw.GetName() == "" {
		return nil, errors.New("name is required")
	}
	hm, err := headerMutations(headerSource{cw.GetRequestHeadersToAdd(), cw.GetResponseHeadersToAdd(),
		cw.GetRequestHeadersToRemove(), cw.GetResponseHeadersToRemove()})
	if err != nil {
		return nil, err
	}
	out := &config.WeightedCluster{Name: cw.GetName(), Weight: u32(cw.GetWeight(), 0), HeaderMutations: hm}
	if out.TypedPerFilterConfig, err = perFilterConfig(cw.GetTypedPerFilterConfig()); err != nil {
		return nil, err
	}
	return out, nil
}

// retryOn lists the retry conditions Envoy knows (HTTP and gRPC).
var retryOn = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "reset-before-request": true, "connect-failure": true,
	"envoy-ratelimited": true, "retriable-4xx": true, "refused-stream": true, "retriable-status-codes": true,
	"retriable-headers": true, "http3-post-connect-failure": true,
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

// Retry defaults, Envoy's.
const (
	defaultNumRetries    = 1
	defaultBackoffBase   = 25 * time.Millisecond
	backoffMaxMultiplier = 10
)

func retryPolicy(rp *routev3.RetryPolicy) (*config.RetryPolicy, error) {
	if err := retryPolicyFields.check(rp); err != nil {
		return nil, err
	}
	out := &config.RetryPolicy{
		NumRetries:                    u32(rp.GetNumRetries(), defaultNumRetries),
		RetriableStatusCodes:          slices.Clone(rp.GetRetriableStatusCodes()),
		HostSelectionRetryMaxAttempts: 1,
		BackoffBase:                   defaultBackoffBase,
	}
	for c := range strings.SplitSeq(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if !retryOn[c] {
			return nil, inField(fmt.Errorf("unknown retry condition %q", c), "retry_on")
		}
		out.RetryOn = append(out.RetryOn, c)
	}
	var err error
	if out.PerTryTimeout, err = durationField(rp.GetPerTryTimeout(), 0, "per_try_timeout"); err != nil {
		return nil, err
	}
	for i, p := range rp.GetRetryHostPredicate() {
		if err := retryHostPredicate(p); err != nil {
			return nil, at(err, segFieldEnd, fmt.Sprintf("retry_host_predicate[%d] (%s)", i, p.GetName()))
		}
		out.RetryOtherHosts = true
	}
	if n := rp.GetHostSelectionRetryMaxAttempts(); n > 0 {
		out.HostSelectionRetryMaxAttempts = int(min(n, 1<<31-1))
	} else if n < 0 {
		return nil, inField(errors.New("must not be negative"), "host_selection_retry_max_attempts")
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		if out.BackoffBase, err = durationField(bo.GetBaseInterval(), defaultBackoffBase, "base_interval"); err != nil {
			return nil, inField(err, "retry_back_off")
		}
		if out.BackoffMax, err = durationField(bo.GetMaxInterval(), 0, "max_interval"); err != nil {
			return nil, inField(err, "retry_back_off")
		}
		if out.BackoffMax != 0 && out.BackoffMax < out.BackoffBase {
			return nil, inField(inField(errors.New("must not be less than base_interval"), "max_interval"), "retry_back_off")
		}
	}
	if out.BackoffMax == 0 {
		out.BackoffMax = backoffMaxMultiplier * out.BackoffBase
	}
	return out, nil
}

// retryHostPredicate accepts previous_hosts, by type or by its legacy name.
func retryHostPredicate(p *routev3.RetryPolicy_RetryHostPredicate) error {
	if err := retryHostPredicateFields.check(p); err != nil {
		return err
	}
	if p.GetTypedConfig() == nil {
		if p.GetName() == "envoy.retry_host_predicates.previous_hosts" {
			return nil
		}
		return errors.New("typed_config is required")
	}
	t, err := unpack(p.GetTypedConfig())
	if err != nil {
		return inField(err, "typed_config")
	}
	if t.name() != namePreviousHosts {
		return fmt.Errorf("retry host predicate type %q: %w", t.url, ErrUnsupported)
	}
	return nil
}

// hashPolicy translates one hash policy; ok is false for a policy that
// hashes nothing (connection_properties with source_ip false).
func hashPolicy(hp *routev3.RouteAction_HashPolicy) (_ config.HashPolicy, ok bool, _ error) {
	out := config.HashPolicy{Terminal: hp.GetTerminal()}
	if err := hashPolicyFields.check(hp); err != nil {
		return out, false, err
	}
	switch p := hp.GetPolicySpecifier().(type) {
	case *routev3.RouteAction_HashPolicy_Header_:
		if err := hashHeaderFields.check(p.Header); err != nil {
			return out, false, inField(err, "header")
		}
		out.Header = p.Header.GetHeaderName()
	case *routev3.RouteAction_HashPolicy_Cookie_:
		// Without ttl Envoy only hashes an existing cookie; with it, it
		// also generates one, which is not supported.
		if err := hashCookieFields.check(p.Cookie); err != nil {
			return out, false, inField(err, "cookie")
		}
		out.Cookie = p.Cookie.GetName()
	case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
		out.SourceIP = p.ConnectionProperties.GetSourceIp()
		if !out.SourceIP {
			return out, false, nil
		}
	case *routev3.RouteAction_HashPolicy_QueryParameter_:
		out.QueryParameter = p.QueryParameter.GetName()
	default:
		return out, false, errors.New("a hash policy specifier is required")
	}
	return out, true, nil
}

// mirrorPolicy translates a request mirror policy. Without runtime, the
// runtime_fraction's default_value is the fraction; unset, every request
// is mirrored.
func mirrorPolicy(mp *routev3.RouteAction_RequestMirrorPolicy) (config.MirrorPolicy, error) {
	out := config.MirrorPolicy{Cluster: mp.GetCluster(), Percent: 100}
	if err := mirrorFields.check(mp); err != nil {
		return out, err
	}
	if out.Cluster == "" {
		return out, errors.New("cluster is required")
	}
	if rf := mp.GetRuntimeFraction(); rf != nil {
		out.Percent = fractionPercent(rf.GetDefaultValue())
	}
	return out, nil
}

func directResponse(d *routev3.DirectResponseAction, bodyLimit int) (*config.DirectResponse, error) {
	if err := directResponseFields.check(d); err != nil {
		return nil, err
	}
	out := &config.DirectResponse{Status: int(d.GetStatus())}
	if b := d.GetBody(); b != nil {
		body, err := dataSource(b, bodyLimit)
		if err != nil {
			return nil, inField(err, "body")
		}
		out.Body = body
	}
	return out, nil
}

var redirectCodes = map[routev3.RedirectAction_RedirectResponseCode]int{
	routev3.RedirectAction_MOVED_PERMANENTLY:  301,
	routev3.RedirectAction_FOUND:              302,
	routev3.RedirectAction_SEE_OTHER:          303,
	routev3.RedirectAction_TEMPORARY_REDIRECT: 307,
	routev3.RedirectAction_PERMANENT_REDIRECT: 308,
}

func redirect(r *routev3.RedirectAction) (*config.Redirect, error) {
	if err := redirectFields.check(r); err != nil {
		return nil, err
	}
	out := &config.Redirect{
		HostRedirect: r.GetHostRedirect(),
		PortRedirect: r.GetPortRedirect(),
		StripQuery:   r.GetStripQuery(),
	}
	code, ok := redirectCodes[r.GetResponseCode()]
	if !ok {
		return nil, unsupportedValue("response_code", r.GetResponseCode())
	}
	out.ResponseCode = code
	switch s := r.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			out.SchemeRedirect = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		out.SchemeRedirect = s.SchemeRedirect
	}
	switch p := r.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		out.PathRedirect = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		out.PrefixRewrite = p.PrefixRewrite
	}
	return out, nil
}

var maxStreamDurationFields = knownFields(&routev3.RouteAction_MaxStreamDuration{}, "max_stream_duration",
	"grpc_timeout_header_max", "grpc_timeout_header_offset")

// streamDuration translates max_stream_duration and the deprecated
// max_grpc_timeout as far as they agree with the route timeout, which is
// how Istio sets them (0s, or a VirtualService timeout in all three):
// max_stream_duration shortens the timeout (it bounds the whole stream,
// the timeout the upstream exchange: close enough for a proxy that
// forwards as it receives); a grpc-timeout header always caps the
// timeout in Sluice, which is grpc_timeout_header_max 0 (no cap on the
// header), or a cap equal to the timeout. Offsets are not supported.
func streamDuration(a *routev3.RouteAction, out *config.RouteAction) error {
	if msd := a.GetMaxStreamDuration(); msd != nil {
		if err := maxStreamDurationFields.check(msd); err != nil {
			return inField(err, "max_stream_duration")
		}
		d, err := durationField(msd.GetMaxStreamDuration(), 0, "max_stream_duration")
		if err != nil {
			return inField(err, "max_stream_duration")
		}
		if d > 0 && (out.Timeout == 0 || d < out.Timeout) {
			out.Timeout = d
		}
		hm, err := durationField(msd.GetGrpcTimeoutHeaderMax(), 0, "grpc_timeout_header_max")
		if err != nil {
			return inField(err, "max_stream_duration")
		}
		if hm != 0 && hm != out.Timeout {
			return inField(inField(fmt.Errorf("%s differs from the route timeout %s: %w", hm, out.Timeout, ErrUnsupported),
				"grpc_timeout_header_max"), "max_stream_duration")
		}
		if off, _ := durationField(msd.GetGrpcTimeoutHeaderOffset(), 0, ""); off != 0 {
			return inField(unsupported("grpc_timeout_header_offset"), "max_stream_duration")
		}
	}
	if mg := a.GetMaxGrpcTimeout(); mg != nil {
		d, err := durationField(mg, 0, "max_grpc_timeout")
		if err != nil {
			return err
		}
		if d != 0 && d != out.Timeout {
			return inField(fmt.Errorf("%s differs from the route timeout %s: %w", d, out.Timeout, ErrUnsupported), "max_grpc_timeout")
		}
	}
	if off, _ := durationField(a.GetGrpcTimeoutOffset(), 0, ""); off != 0 {
		return unsupported("grpc_timeout_offset")
	}
	return nil
}
