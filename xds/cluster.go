package xds

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Cluster defaults, Envoy's.
const (
	defaultConnectTimeout      = 5 * time.Second
	defaultUpstreamIdleTimeout = time.Hour
	defaultRingHashMin         = 1024
	defaultRingHashMax         = 8 * 1024 * 1024
	defaultMaglevTableSize     = 65537
	maxMaglevTableSize         = 5000011
	defaultLeastRequestChoices = 2
	defaultRetryBudgetPercent  = 20
	defaultMinRetryConcurrency = 3
)

var (
	clusterFields = knownFields(&clusterv3.Cluster{},
		"name", "type", "connect_timeout", "lb_policy", "load_assignment", "circuit_breakers",
		"typed_extension_protocol_options", "http2_protocol_options", "common_http_protocol_options",
		"max_requests_per_connection", "ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
		"round_robin_lb_config", "transport_socket", "common_lb_config", "protocol_selection",
		"transport_socket_matches", "upstream_bind_config", "metadata",
		// Read for STRICT_DNS and LOGICAL_DNS clusters (dnsOptions);
		// respect_dns_ttl is kept, but Go's resolver reports no TTL, so
		// dns_refresh_rate applies.
		"dns_refresh_rate", "dns_jitter", "dns_failure_refresh_rate", "respect_dns_ttl", "dns_lookup_family",
		// eds_cluster_config is read by the xDS client.
		"eds_cluster_config",
		// Checked below: only Istio's metadata exchange filter, which is
		// not run (see istio.go).
		"filters",
		// Passive health checking (outlierDetection of Istio's
		// DestinationRules); see outlierDetection.
		"outlier_detection",
		// Ignored: stats, the choice of DNS servers and resolver (the
		// system's, through Go's resolver), warming, buffer limits,
		// socket options and HTTP/1 codec tuning.
		"alt_stat_name", "track_timeout_budgets", "track_cluster_stats", "stats_matcher",
		"dns_resolvers", "use_tcp_for_dns_lookups", "dns_resolution_config", "typed_dns_resolver_config",
		"wait_for_warm_on_init", "cleanup_interval", "per_connection_buffer_limit_bytes",
		"per_connection_buffer_high_watermark_timeout", "upstream_connection_options",
		"close_connections_on_host_health_failure", "ignore_health_on_host_removal", "preconnect_policy",
		"http_protocol_options")
	refreshRateFields = knownFields(&clusterv3.Cluster_RefreshRate{}, "base_interval", "max_interval")
	// healthy_panic_threshold applies to outlier ejections (the only
	// health that changes at run time). Ignored: host set update tuning.
	commonLBFields = knownFields(&clusterv3.Cluster_CommonLbConfig{}, "healthy_panic_threshold",
		"update_merge_window", "ignore_new_hosts_until_first_hc", "close_connections_on_host_set_change",
		"zone_aware_lb_config")
	// Ignored: successful_active_health_check_uneject_host (there is no
	// active health checking) and max_ejection_time_jitter (ejections end
	// at the interval's pass, which spreads them already).
	outlierFields = knownFields(&clusterv3.OutlierDetection{}, "consecutive_5xx", "interval", "base_ejection_time",
		"max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
		"success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
		"enforcing_consecutive_gateway_failure", "split_external_local_origin_errors", "consecutive_local_origin_failure",
		"enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate", "failure_percentage_threshold",
		"enforcing_failure_percentage", "enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
		"failure_percentage_request_volume", "max_ejection_time", "always_eject_one_host",
		"successful_active_health_check_uneject_host", "max_ejection_time_jitter")
	ringHashFields     = knownFields(&clusterv3.Cluster_RingHashLbConfig{}, "minimum_ring_size", "maximum_ring_size")
	maglevFields       = knownFields(&clusterv3.Cluster_MaglevLbConfig{}, "table_size")
	leastRequestFields = knownFields(&clusterv3.Cluster_LeastRequestLbConfig{}, "choice_count")
	roundRobinFields   = knownFields(&clusterv3.Cluster_RoundRobinLbConfig{})
	// Ignored: cluster_name (the cluster's own), overprovisioning and stale
	// endpoint tuning.
	loadAssignmentFields = knownFields(&endpointv3.ClusterLoadAssignment{}, "cluster_name", "endpoints", "policy")
	lbPolicyFields       = knownFields(&endpointv3.ClusterLoadAssignment_Policy{}, "overprovisioning_factor",
		"endpoint_stale_after", "weighted_priority_health")
	// Ignored: locality and its weight (locality weighted balancing, the
	// only user of the weight, is rejected in common_lb_config), metadata.
	localityFields = knownFields(&endpointv3.LocalityLbEndpoints{}, "lb_endpoints", "priority",
		"locality", "metadata", "load_balancing_weight", "proximity")
	edsClusterConfigFields = knownFields(&clusterv3.Cluster_EdsClusterConfig{}, "eds_config", "service_name")
	// metadata is read for transport_socket_matches; the rest of it
	// (Istio's workload name, ...) has no user.
	lbEndpointFields = knownFields(&endpointv3.LbEndpoint{}, "endpoint", "health_status", "load_balancing_weight",
		"metadata")
	// Pipe: mode sets the permissions of a socket file a listener
	// creates; an endpoint only connects, so it is ignored.
	pipeFields                = knownFields(&corev3.Pipe{}, "path", "mode")
	transportSocketMatchField = knownFields(&clusterv3.Cluster_TransportSocketMatch{}, "name", "match", "transport_socket")
	// freebind is honoured when false (the default) only; the source
	// port must be 0.
	bindConfigFields = knownFields(&corev3.BindConfig{}, "source_address", "freebind")
	// Cluster metadata: filter_metadata is kept for filters;
	// typed_filter_metadata has no reader.
	metadataFields = knownFields(&corev3.Metadata{}, "filter_metadata", "typed_filter_metadata")
	// Ignored: active health checking settings (there is none), names.
	endpointFields = knownFields(&endpointv3.Endpoint{}, "address", "health_check_config", "hostname",
		"observability_name")
	// Ignored: track_remaining (stats). Thresholds of HIGH priority are
	// ignored too: no route can ask for HIGH priority.
	thresholdsFields      = knownFields(&clusterv3.CircuitBreakers_Thresholds{}, "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget", "track_remaining")
	circuitBreakersFields = knownFields(&clusterv3.CircuitBreakers{}, "thresholds")
	retryBudgetFields     = knownFields(&clusterv3.CircuitBreakers_Thresholds_RetryBudget{}, "budget_percent", "min_retry_concurrency")
	upstreamHTTPFields    = knownFields(&upstreamhttpv3.HttpProtocolOptions{}, "common_http_protocol_options",
		"explicit_http_config", "use_downstream_protocol_config", "auto_config", "upstream_http_protocol_options")
	// HTTP/1 codec tuning is ignored, as in the deprecated cluster field
	// http_protocol_options.
	explicitHTTPFields   = knownFields(&upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{}, "http_protocol_options", "http2_protocol_options")
	downstreamHTTPFields = knownFields(&upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{}, "http_protocol_options", "http2_protocol_options")
	autoHTTPFields       = knownFields(&upstreamhttpv3.HttpProtocolOptions_AutoHttpConfig{}, "http_protocol_options", "http2_protocol_options")
	// auto_sni sets the SNI of each upstream connection from the request's
	// host; the config model's SNI is one name per cluster (a pool keyed by
	// host would be needed), so it and override_auto_sni_header are
	// ignored. That cannot weaken verification: the cluster's own sni (or
	// none) is sent and the certificate is checked as configured. A server
	// that picks its certificate by SNI may then present its default one,
	// which fails verification rather than passing it. auto_san_validation
	// would add a check, so it is rejected rather than ignored.
	upstreamHTTPOptionFields = knownFields(&corev3.UpstreamHttpProtocolOptions{}, "auto_sni", "override_auto_sni_header",
		"auto_san_validation")
	// Ignored: upstream response header limits and duration jitter.
	upstreamProtocolFields = knownFields(&corev3.HttpProtocolOptions{}, "idle_timeout",
		"max_requests_per_connection", "max_headers_count", "max_response_headers_kb",
		"max_connection_duration_jitter")
)

// TranslateCluster checks a Cluster's validation rules and translates it.
func TranslateCluster(c *clusterv3.Cluster) (*config.Cluster, error) {
	if c == nil {
		return nil, prefixed(errors.New("nil cluster"))
	}
	if err := validateMsg(c); err != nil {
		return nil, prefixed(inNamed(err, "cluster", c.GetName()))
	}
	out, err := translateCluster(c, nil)
	if err != nil {
		return nil, prefixed(inNamed(err, "cluster", c.GetName()))
	}
	return out, nil
}

func translateCluster(c *clusterv3.Cluster, d *deps) (*config.Cluster, error) {
	if err := clusterFields.check(c); err != nil {
		return nil, err
	}
	if c.GetName() == "" {
		return nil, errors.New("name is required")
	}
	out := &config.Cluster{Name: c.GetName(), CircuitBreakers: config.DefaultCircuitBreakers()}
	t := c.GetType()
	switch t {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS,
		clusterv3.Cluster_EDS, clusterv3.Cluster_ORIGINAL_DST:
		out.Type = t.String()
	default:
		return nil, unsupportedValue("type", t)
	}
	var err error
	if out.ConnectTimeout, err = durationField(c.GetConnectTimeout(), defaultConnectTimeout, "connect_timeout"); err != nil {
		return nil, err
	}
	if c.GetCleanupInterval() != nil {
		if out.CleanupInterval, err = durationField(c.GetCleanupInterval(), 0, "cleanup_interval"); err != nil {
			return nil, err
		}
	}
	if err := lbPolicy(c, out); err != nil {
		return nil, err
	}
	if t == clusterv3.Cluster_STRICT_DNS || t == clusterv3.Cluster_LOGICAL_DNS {
		if err := dnsOptions(c, out); err != nil {
			return nil, err
		}
	}
	if cl := c.GetCommonLbConfig(); cl != nil {
		if err := commonLBFields.check(cl); err != nil {
			return nil, inField(err, "common_lb_config")
		}
		if p := cl.GetHealthyPanicThreshold(); p != nil {
			v := p.GetValue()
			if v < 0 || v > 100 {
				return nil, inField(inField(fmt.Errorf("%v is not a percentage", v), "healthy_panic_threshold"), "common_lb_config")
			}
			out.HealthyPanicThreshold = &v
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		if out.Outlier, err = outlierDetection(od); err != nil {
			return nil, inField(err, "outlier_detection")
		}
	}
	var socketMeta []endpointMeta
	switch la := c.GetLoadAssignment(); {
	case t == clusterv3.Cluster_EDS && d.dynamic():
		if la != nil {
			// Envoy ignores it; Sluice drops nothing silently.
			return nil, inField(errors.New("an EDS cluster takes its endpoints from EDS, not load_assignment"), "load_assignment")
		}
		if out.Endpoints, socketMeta, err = edsEndpoints(c, d); err != nil {
			return nil, inField(err, "eds_cluster_config")
		}
	case la != nil:
		if out.Endpoints, socketMeta, err = endpoints(la, t); err != nil {
			return nil, inField(err, "load_assignment")
		}
	}
	if m := c.GetMetadata(); m != nil {
		if err := metadataFields.check(m); err != nil {
			return nil, inField(err, "metadata")
		}
		out.Metadata = filterMetadata(m)
	}
	if bc := c.GetUpstreamBindConfig(); bc != nil {
		if out.SourceAddress, err = sourceAddress(bc); err != nil {
			return nil, inField(err, "upstream_bind_config")
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		tt, err := transportSocket(ts)
		if err != nil {
			return nil, inField(err, "transport_socket")
		}
		switch m := tt.msg.(type) {
		case nil:
		case *tlsv3.UpstreamTlsContext:
			if out.TLS, err = upstreamTLS(m, out.Endpoints, d); err != nil {
				return nil, inField(inField(err, "typed_config"), "transport_socket")
			}
		default:
			return nil, inField(fmt.Errorf("%s (%s): a cluster takes %s or %s", ts.GetName(), tt.url,
				nameUpstreamTLS, nameRawBuffer), "transport_socket")
		}
	}
	if tsm := c.GetTransportSocketMatches(); len(tsm) > 0 {
		if err := transportSocketMatches(tsm, out, socketMeta, d); err != nil {
			return nil, err
		}
	}
	if fs := c.GetFilters(); len(fs) > 0 {
		if err := clusterFilters(fs, out); err != nil {
			return nil, err
		}
	}
	switch {
	case t == clusterv3.Cluster_LOGICAL_DNS && len(out.Endpoints) != 1:
		return nil, inField(errors.New("a LOGICAL_DNS cluster needs exactly one endpoint"), "load_assignment")
	case t == clusterv3.Cluster_ORIGINAL_DST && len(out.Endpoints) > 0:
		return nil, inField(errors.New("an ORIGINAL_DST cluster may not list endpoints"), "load_assignment")
	}
	if cb := c.GetCircuitBreakers(); cb != nil {
		if out.CircuitBreakers, err = circuitBreakers(cb); err != nil {
			return nil, inField(err, "circuit_breakers")
		}
	}
	if err := upstreamProtocol(c, out); err != nil {
		return nil, err
	}
	return out, nil
}

// defaultDNSRefreshRate is Envoy's dns_refresh_rate default.
const defaultDNSRefreshRate = 5 * time.Second

// dnsOptions translates the dns_* fields of a DNS cluster.
func dnsOptions(c *clusterv3.Cluster, out *config.Cluster) error {
	o := &out.DNS
	var err error
	if o.RefreshRate, err = durationField(c.GetDnsRefreshRate(), defaultDNSRefreshRate, "dns_refresh_rate"); err != nil {
		return err
	}
	if o.Jitter, err = durationField(c.GetDnsJitter(), 0, "dns_jitter"); err != nil {
		return err
	}
	if fr := c.GetDnsFailureRefreshRate(); fr != nil {
		if err := refreshRateFields.check(fr); err != nil {
			return inField(err, "dns_failure_refresh_rate")
		}
		if o.FailureRefreshBase, err = durationField(fr.GetBaseInterval(), 0, "base_interval"); err != nil {
			return inField(err, "dns_failure_refresh_rate")
		}
		if o.FailureRefreshBase <= 0 {
			return inField(errors.New("base_interval is required"), "dns_failure_refresh_rate")
		}
		if o.FailureRefreshMax, err = durationField(fr.GetMaxInterval(), 10*o.FailureRefreshBase, "max_interval"); err != nil {
			return inField(err, "dns_failure_refresh_rate")
		}
		if o.FailureRefreshMax < o.FailureRefreshBase {
			return inField(fmt.Errorf("max_interval %v is below base_interval %v", o.FailureRefreshMax, o.FailureRefreshBase),
				"dns_failure_refresh_rate")
		}
	}
	o.RespectTTL = c.GetRespectDnsTtl()
	switch f := c.GetDnsLookupFamily(); f {
	case clusterv3.Cluster_AUTO, clusterv3.Cluster_V4_ONLY, clusterv3.Cluster_V6_ONLY, clusterv3.Cluster_V4_PREFERRED, clusterv3.Cluster_ALL:
		o.LookupFamily = f.String()
	default:
		return unsupportedValue("dns_lookup_family", f)
	}
	return nil
}

// lbPolicy sets the load balancing policy and its options.
func lbPolicy(c *clusterv3.Cluster, out *config.Cluster) error {
	p := c.GetLbPolicy()
	if (p == clusterv3.Cluster_CLUSTER_PROVIDED) != (c.GetType() == clusterv3.Cluster_ORIGINAL_DST) {
		return inField(errors.New("an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED, and only it may use it"), "lb_policy")
	}
	switch p {
	case clusterv3.Cluster_ROUND_ROBIN:
		out.LBPolicy = config.LBRoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LBPolicy = config.LBLeastRequest
	case clusterv3.Cluster_RANDOM:
		out.LBPolicy = config.LBRandom
	case clusterv3.Cluster_RING_HASH:
		out.LBPolicy = config.LBRingHash
	case clusterv3.Cluster_MAGLEV:
		out.LBPolicy = config.LBMaglev
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		// ORIGINAL_DST: the connection's original destination is the
		// endpoint; there is nothing to balance, LBPolicy stays empty.
	default:
		return unsupportedValue("lb_policy", p)
	}
	out.RingHashMinSize, out.RingHashMaxSize = defaultRingHashMin, defaultRingHashMax
	out.MaglevTableSize = defaultMaglevTableSize
	out.LeastRequestCount = defaultLeastRequestChoices
	switch lc := c.GetLbConfig().(type) {
	case *clusterv3.Cluster_RingHashLbConfig_:
		if err := ringHashFields.check(lc.RingHashLbConfig); err != nil {
			return inField(err, "ring_hash_lb_config")
		}
		out.RingHashMinSize = u64(lc.RingHashLbConfig.GetMinimumRingSize(), defaultRingHashMin)
		out.RingHashMaxSize = u64(lc.RingHashLbConfig.GetMaximumRingSize(), defaultRingHashMax)
		if out.RingHashMinSize > out.RingHashMaxSize {
			return inField(fmt.Errorf("minimum_ring_size %d is more than maximum_ring_size %d",
				out.RingHashMinSize, out.RingHashMaxSize), "ring_hash_lb_config")
		}
	case *clusterv3.Cluster_MaglevLbConfig_:
		if err := maglevFields.check(lc.MaglevLbConfig); err != nil {
			return inField(err, "maglev_lb_config")
		}
		out.MaglevTableSize = u64(lc.MaglevLbConfig.GetTableSize(), defaultMaglevTableSize)
		if out.MaglevTableSize > maxMaglevTableSize || !isPrime(out.MaglevTableSize) {
			return inField(inField(fmt.Errorf("%d is not a prime number of at most %d", out.MaglevTableSize,
				maxMaglevTableSize), "table_size"), "maglev_lb_config")
		}
	case *clusterv3.Cluster_LeastRequestLbConfig_:
		if err := leastRequestFields.check(lc.LeastRequestLbConfig); err != nil {
			return inField(err, "least_request_lb_config")
		}
		out.LeastRequestCount = int(u32(lc.LeastRequestLbConfig.GetChoiceCount(), defaultLeastRequestChoices))
	case *clusterv3.Cluster_RoundRobinLbConfig_:
		if err := roundRobinFields.check(lc.RoundRobinLbConfig); err != nil {
			return inField(err, "round_robin_lb_config")
		}
	}
	return nil
}

// isPrime reports whether n is prime (Maglev table sizes must be). Callers
// bound n to maxMaglevTableSize, so trial division is cheap.
func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// edsEndpoints returns the endpoints of an EDS cluster from the
// ClusterLoadAssignment named by eds_cluster_config.service_name, or by
// the cluster's name. None while it has not arrived (the cluster waits for
// it, see deps) or after the initial fetch timeout.
//
// Localities are flattened: each endpoint keeps its own weight and its
// locality's priority, locality weights are ignored (locality weighted
// balancing is rejected in common_lb_config, so nothing would read them).
func edsEndpoints(c *clusterv3.Cluster, d *deps) ([]*config.Endpoint, []endpointMeta, error) {
	ecc := c.GetEdsClusterConfig()
	if err := edsClusterConfigFields.check(ecc); err != nil {
		return nil, nil, err
	}
	name := ecc.GetServiceName()
	if name == "" {
		name = c.GetName()
	}
	la, err := d.loadAssignment(name, ecc.GetEdsConfig())
	if err != nil || la == nil {
		return nil, nil, inField(err, "eds_config")
	}
	eps, meta, err := endpoints(la, clusterv3.Cluster_EDS)
	return eps, meta, blame(inNamed(err, typeInfo[tEndpoint].kind, name), tEndpoint, name)
}

// endpointMeta is what transport_socket_matches match an endpoint on: the
// envoy.transport_socket_match filter metadata of the endpoint and of its
// locality (either may be nil).
type endpointMeta struct {
	endpoint, locality *structpb.Struct
}

// transportSocketMatchNS is the metadata namespace transport socket
// matches read.
const transportSocketMatchNS = "envoy.transport_socket_match"

func endpoints(la *endpointv3.ClusterLoadAssignment, t clusterv3.Cluster_DiscoveryType) ([]*config.Endpoint, []endpointMeta, error) {
	if err := loadAssignmentFields.check(la); err != nil {
		return nil, nil, err
	}
	if p := la.GetPolicy(); p != nil {
		if err := lbPolicyFields.check(p); err != nil {
			return nil, nil, inField(err, "policy")
		}
	}
	var out []*config.Endpoint
	var meta []endpointMeta
	for i, loc := range la.GetEndpoints() {
		if err := localityFields.check(loc); err != nil {
			return nil, nil, inIndex(err, "endpoints", i)
		}
		locMeta := loc.GetMetadata().GetFilterMetadata()[transportSocketMatchNS]
		for j, lbe := range loc.GetLbEndpoints() {
			ep, err := lbEndpoint(lbe, t)
			if err != nil {
				return nil, nil, inIndex(inIndex(err, "lb_endpoints", j), "endpoints", i)
			}
			ep.Priority = loc.GetPriority()
			out = append(out, ep)
			meta = append(meta, endpointMeta{endpoint: lbe.GetMetadata().GetFilterMetadata()[transportSocketMatchNS], locality: locMeta})
		}
	}
	return out, meta, nil
}

func lbEndpoint(lbe *endpointv3.LbEndpoint, t clusterv3.Cluster_DiscoveryType) (*config.Endpoint, error) {
	if err := lbEndpointFields.check(lbe); err != nil {
		return nil, err
	}
	e := lbe.GetEndpoint()
	if e == nil {
		return nil, errors.New("endpoint is required")
	}
	if err := endpointFields.check(e); err != nil {
		return nil, inField(err, "endpoint")
	}
	addr, err := endpointAddress(e.GetAddress(), t)
	if err != nil {
		return nil, inField(inField(err, "address"), "endpoint")
	}
	if (t == clusterv3.Cluster_STATIC || t == clusterv3.Cluster_EDS) && !strings.HasPrefix(addr, config.UnixAddressPrefix) {
		host, _, _ := net.SplitHostPort(addr)
		if _, err := netip.ParseAddr(host); err != nil {
			return nil, inField(inField(fmt.Errorf("%q is not an IP address (%s clusters do not resolve names)", host, t), "address"), "endpoint")
		}
	}
	var healthy bool
	switch lbe.GetHealthStatus() {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
		healthy = true
	}
	return &config.Endpoint{Address: addr, Weight: u32(lbe.GetLoadBalancingWeight(), 1), Healthy: healthy}, nil
}

func circuitBreakers(cb *clusterv3.CircuitBreakers) (config.CircuitBreakers, error) {
	out := config.DefaultCircuitBreakers()
	if err := circuitBreakersFields.check(cb); err != nil {
		return out, err
	}
	seenDefault := false
	for i, t := range cb.GetThresholds() {
		if err := thresholdsFields.check(t); err != nil {
			return out, inIndex(err, "thresholds", i)
		}
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if seenDefault {
			return out, inIndex(errors.New("more than one threshold for priority DEFAULT"), "thresholds", i)
		}
		seenDefault = true
		out.MaxConnections = int(u32(t.GetMaxConnections(), uint32(out.MaxConnections)))
		out.MaxPendingRequests = int(u32(t.GetMaxPendingRequests(), uint32(out.MaxPendingRequests)))
		out.MaxRequests = int(u32(t.GetMaxRequests(), uint32(out.MaxRequests)))
		out.MaxRetries = int(u32(t.GetMaxRetries(), uint32(out.MaxRetries)))
		if rb := t.GetRetryBudget(); rb != nil {
			if err := retryBudgetFields.check(rb); err != nil {
				return out, inIndex(inField(err, "retry_budget"), "thresholds", i)
			}
			out.RetryBudgetPercent = defaultRetryBudgetPercent
			if p := rb.GetBudgetPercent(); p != nil {
				out.RetryBudgetPercent = p.GetValue()
			}
			out.MinRetryConcurrency = int(u32(rb.GetMinRetryConcurrency(), defaultMinRetryConcurrency))
		}
	}
	return out, nil
}

// upstreamProtocol sets the upstream HTTP protocol, its HTTP/2 options and
// connection reuse from typed_extension_protocol_options (or the
// deprecated cluster fields).
func upstreamProtocol(c *clusterv3.Cluster, out *config.Cluster) error {
	out.Protocol = config.ProtocolHTTP1
	if h2 := c.GetHttp2ProtocolOptions(); h2 != nil {
		out.Protocol = config.ProtocolHTTP2
		var err error
		if out.HTTP2, err = http2Options(h2); err != nil {
			return inField(err, "http2_protocol_options")
		}
	}
	if c.GetProtocolSelection() == clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL {
		out.Protocol = config.ProtocolDownstream
	}
	common := c.GetCommonHttpProtocolOptions()
	commonField := "common_http_protocol_options"
	opts := c.GetTypedExtensionProtocolOptions()
	for _, key := range slices.Sorted(maps.Keys(opts)) {
		field := fmt.Sprintf("typed_extension_protocol_options[%s]", key)
		if key != nameUpstreamHTTPOptions {
			return inField(ErrUnsupported, field)
		}
		t, err := unpack(opts[key])
		if err != nil {
			return inField(err, field)
		}
		po, ok := t.msg.(*upstreamhttpv3.HttpProtocolOptions)
		if !ok {
			return inField(fmt.Errorf("type %q is not %s", t.url, nameUpstreamHTTPOptions), field)
		}
		if err := upstreamHTTPFields.check(po); err != nil {
			return inField(err, field)
		}
		// The deprecated max_requests_per_connection may stay beside it
		// (Istio's bootstrap has both), unless both set the limit: see
		// below.
		if c.GetHttp2ProtocolOptions() != nil || common != nil ||
			c.GetProtocolSelection() != clusterv3.Cluster_USE_CONFIGURED_PROTOCOL {
			return inField(errors.New("may not be combined with the deprecated http2_protocol_options, "+
				"common_http_protocol_options or protocol_selection cluster fields"), field)
		}
		if err := typedUpstreamProtocol(po, out); err != nil {
			return inField(err, field)
		}
		if uo := po.GetUpstreamHttpProtocolOptions(); uo != nil {
			if err := upstreamHTTPOptionFields.check(uo); err != nil {
				return inField(inField(err, "upstream_http_protocol_options"), field)
			}
			if uo.GetAutoSanValidation() {
				return inField(inField(unsupportedValue("auto_san_validation", true), "upstream_http_protocol_options"), field)
			}
		}
		common, commonField = po.GetCommonHttpProtocolOptions(), field+".common_http_protocol_options"
	}
	if out.Protocol == config.ProtocolAuto && out.TLS == nil {
		return errors.New("the auto upstream protocol is chosen by ALPN and needs a TLS transport_socket")
	}
	out.IdleTimeout = defaultUpstreamIdleTimeout
	out.MaxRequestsPerConnection = int(u32(c.GetMaxRequestsPerConnection(), 0))
	if common == nil {
		return nil
	}
	if err := upstreamProtocolFields.check(common); err != nil {
		return inField(err, commonField)
	}
	var err error
	if out.IdleTimeout, err = durationField(common.GetIdleTimeout(), defaultUpstreamIdleTimeout, "idle_timeout"); err != nil {
		return inField(err, commonField)
	}
	if common.GetMaxRequestsPerConnection() != nil {
		if c.GetMaxRequestsPerConnection() != nil {
			return inField(errors.New("may not be combined with the deprecated max_requests_per_connection cluster field"), commonField)
		}
		out.MaxRequestsPerConnection = int(common.GetMaxRequestsPerConnection().GetValue())
	}
	return nil
}

// typedUpstreamProtocol sets the protocol from HttpProtocolOptions'
// upstream_protocol_options: explicit_http_config (http1 or http2),
// use_downstream_protocol_config (downstream) or auto_config (auto). With
// none, the protocol stays HTTP/1.1, as in Envoy.
func typedUpstreamProtocol(po *upstreamhttpv3.HttpProtocolOptions, out *config.Cluster) error {
	var (
		h2    *corev3.Http2ProtocolOptions
		field string
	)
	switch {
	case po.GetExplicitHttpConfig() != nil:
		ex := po.GetExplicitHttpConfig()
		field = "explicit_http_config"
		if err := explicitHTTPFields.check(ex); err != nil {
			return inField(err, field)
		}
		switch pc := ex.GetProtocolConfig().(type) {
		case *upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions:
			out.Protocol = config.ProtocolHTTP1
		case *upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions:
			out.Protocol = config.ProtocolHTTP2
			h2 = pc.Http2ProtocolOptions
		}
	case po.GetUseDownstreamProtocolConfig() != nil:
		ud := po.GetUseDownstreamProtocolConfig()
		field = "use_downstream_protocol_config"
		if err := downstreamHTTPFields.check(ud); err != nil {
			return inField(err, field)
		}
		out.Protocol = config.ProtocolDownstream
		h2 = ud.GetHttp2ProtocolOptions()
	case po.GetAutoConfig() != nil:
		ac := po.GetAutoConfig()
		field = "auto_config"
		if err := autoHTTPFields.check(ac); err != nil {
			return inField(err, field)
		}
		out.Protocol = config.ProtocolAuto
		h2 = ac.GetHttp2ProtocolOptions()
	}
	if h2 == nil {
		return nil
	}
	var err error
	out.HTTP2, err = http2Options(h2)
	return inField(inField(err, "http2_protocol_options"), field)
}

// endpointAddress translates an endpoint's address: a TCP socket address
// ("host:port") or a pipe ("unix:PATH", "unix:@NAME" for the abstract
// namespace), which only STATIC and EDS clusters may list (the DNS types
// resolve names).
func endpointAddress(a *corev3.Address, t clusterv3.Cluster_DiscoveryType) (string, error) {
	p := a.GetPipe()
	if p == nil {
		return hostPort(a)
	}
	if err := pipeFields.check(p); err != nil {
		return "", inField(err, "pipe")
	}
	if t != clusterv3.Cluster_STATIC && t != clusterv3.Cluster_EDS {
		return "", inField(fmt.Errorf("a %s cluster resolves host names; a pipe endpoint needs a STATIC or EDS cluster", t), "pipe")
	}
	switch p.GetPath() {
	case "", "@":
		return "", inField(errors.New("path is required"), "pipe")
	}
	return config.UnixAddressPrefix + p.GetPath(), nil
}

// filterMetadata converts a Metadata's filter_metadata.
func filterMetadata(m *corev3.Metadata) map[string]map[string]any {
	fm := m.GetFilterMetadata()
	if len(fm) == 0 {
		return nil
	}
	out := make(map[string]map[string]any, len(fm))
	for ns, st := range fm {
		out[ns] = st.AsMap()
	}
	return out
}

// sourceAddress translates upstream_bind_config: the local IP address
// upstream connections are made from.
func sourceAddress(bc *corev3.BindConfig) (string, error) {
	if err := bindConfigFields.check(bc); err != nil {
		return "", err
	}
	if boolean(bc.GetFreebind(), false) {
		return "", unsupportedValue("freebind", true)
	}
	sa := bc.GetSourceAddress()
	if sa == nil {
		return "", errors.New("source_address is required")
	}
	if err := socketAddressFields.check(sa); err != nil {
		return "", inField(err, "source_address")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return "", inField(unsupportedValue("protocol", sa.GetProtocol()), "source_address")
	}
	if sa.GetPortValue() != 0 {
		return "", inField(fmt.Errorf("port_value %d: %w (the source port is always chosen by the system)", sa.GetPortValue(), ErrUnsupported), "source_address")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || ip.Zone() != "" {
		return "", inField(fmt.Errorf("%q is not an IP address", sa.GetAddress()), "source_address")
	}
	return ip.String(), nil
}

// transportSocketMatches translates transport_socket_matches and picks,
// for each endpoint, the first match whose criteria its metadata (the
// endpoint's envoy.transport_socket_match metadata, else its locality's)
// satisfies: every key of the match with an equal value. An endpoint that
// matches none keeps the cluster's transport_socket, as in Envoy.
func transportSocketMatches(tsm []*clusterv3.Cluster_TransportSocketMatch, out *config.Cluster, meta []endpointMeta, d *deps) error {
	names := map[string]bool{}
	for i, m := range tsm {
		if err := transportSocketMatchField.check(m); err != nil {
			return inIndex(err, "transport_socket_matches", i)
		}
		name := m.GetName()
		if name == "" {
			name = fmt.Sprintf("transport_socket_matches[%d]", i)
		}
		if names[name] {
			return inIndex(fmt.Errorf("duplicate name %q", name), "transport_socket_matches", i)
		}
		names[name] = true
		tm := &config.TransportSocketMatch{Name: name}
		if ts := m.GetTransportSocket(); ts != nil {
			tt, err := transportSocket(ts)
			if err != nil {
				return inIndex(inField(err, "transport_socket"), "transport_socket_matches", i)
			}
			switch x := tt.msg.(type) {
			case nil:
			case *tlsv3.UpstreamTlsContext:
				if tm.TLS, err = upstreamTLS(x, out.Endpoints, d); err != nil {
					return inIndex(inField(inField(err, "typed_config"), "transport_socket"), "transport_socket_matches", i)
				}
			default:
				return inIndex(inField(fmt.Errorf("%s (%s): a cluster takes %s or %s", ts.GetName(), tt.url,
					nameUpstreamTLS, nameRawBuffer), "transport_socket"), "transport_socket_matches", i)
			}
		}
		out.TransportSocketMatches = append(out.TransportSocketMatches, tm)
	}
	for i, ep := range out.Endpoints {
		var em endpointMeta
		if i < len(meta) {
			em = meta[i]
		}
		for j, m := range tsm {
			if metadataMatches(m.GetMatch(), em.endpoint) || (em.endpoint == nil && metadataMatches(m.GetMatch(), em.locality)) {
				ep.TransportSocket = out.TransportSocketMatches[j].Name
				break
			}
		}
	}
	return nil
}

// metadataMatches reports whether every field of want is in have with an
// equal value (an empty want matches anything, even no metadata).
func metadataMatches(want, have *structpb.Struct) bool {
	for k, v := range want.GetFields() {
		hv, ok := have.GetFields()[k]
		if !ok || !proto.Equal(v, hv) {
			return false
		}
	}
	return true
}

// outlierDetection translates outlier_detection with Envoy's defaults.
func outlierDetection(od *clusterv3.OutlierDetection) (*config.OutlierDetection, error) {
	if err := outlierFields.check(od); err != nil {
		return nil, err
	}
	out := &config.OutlierDetection{
		MaxEjectionPercent:                     u32(od.GetMaxEjectionPercent(), 10),
		AlwaysEjectOneHost:                     boolean(od.GetAlwaysEjectOneHost(), false),
		Consecutive5xx:                         u32(od.GetConsecutive_5Xx(), 5),
		EnforcingConsecutive5xx:                u32(od.GetEnforcingConsecutive_5Xx(), 100),
		ConsecutiveGatewayFailure:              u32(od.GetConsecutiveGatewayFailure(), 5),
		EnforcingConsecutiveGatewayFailure:     u32(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		SplitExternalLocalOriginErrors:         od.GetSplitExternalLocalOriginErrors(),
		ConsecutiveLocalOriginFailure:          u32(od.GetConsecutiveLocalOriginFailure(), 5),
		EnforcingConsecutiveLocalOriginFailure: u32(od.GetEnforcingConsecutiveLocalOriginFailure(), 100),
		EnforcingSuccessRate:                   u32(od.GetEnforcingSuccessRate(), 100),
		EnforcingLocalOriginSuccessRate:        u32(od.GetEnforcingLocalOriginSuccessRate(), 100),
		SuccessRateMinimumHosts:                u32(od.GetSuccessRateMinimumHosts(), 5),
		SuccessRateRequestVolume:               u32(od.GetSuccessRateRequestVolume(), 100),
		SuccessRateStdevFactor:                 u32(od.GetSuccessRateStdevFactor(), 1900),
		FailurePercentageThreshold:             u32(od.GetFailurePercentageThreshold(), 85),
		EnforcingFailurePercentage:             u32(od.GetEnforcingFailurePercentage(), 0),
		EnforcingFailurePercentageLocalOrigin:  u32(od.GetEnforcingFailurePercentageLocalOrigin(), 0),
		FailurePercentageMinimumHosts:          u32(od.GetFailurePercentageMinimumHosts(), 5),
		FailurePercentageRequestVolume:         u32(od.GetFailurePercentageRequestVolume(), 50),
	}
	var err error
	if out.Interval, err = durationField(od.GetInterval(), 10*time.Second, "interval"); err != nil {
		return nil, err
	}
	if out.BaseEjectionTime, err = durationField(od.GetBaseEjectionTime(), 30*time.Second, "base_ejection_time"); err != nil {
		return nil, err
	}
	if out.MaxEjectionTime, err = durationField(od.GetMaxEjectionTime(), 300*time.Second, "max_ejection_time"); err != nil {
		return nil, err
	}
	if out.Interval == 0 || out.BaseEjectionTime == 0 {
		return nil, errors.New("interval and base_ejection_time must be positive")
	}
	for _, p := range []struct {
		name string
		v    uint32
	}{{"max_ejection_percent", out.MaxEjectionPercent}, {"enforcing_consecutive_5xx", out.EnforcingConsecutive5xx},
		{"enforcing_consecutive_gateway_failure", out.EnforcingConsecutiveGatewayFailure},
		{"enforcing_consecutive_local_origin_failure", out.EnforcingConsecutiveLocalOriginFailure},
		{"enforcing_success_rate", out.EnforcingSuccessRate}, {"enforcing_local_origin_success_rate", out.EnforcingLocalOriginSuccessRate},
		{"failure_percentage_threshold", out.FailurePercentageThreshold}, {"enforcing_failure_percentage", out.EnforcingFailurePercentage},
		{"enforcing_failure_percentage_local_origin", out.EnforcingFailurePercentageLocalOrigin}} {
		if p.v > 100 {
			return nil, inField(fmt.Errorf("%d is not a percentage", p.v), p.name)
		}
	}
	return out, nil
}
