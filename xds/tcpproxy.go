package xds

// Translation of Envoy's tcp_proxy network filter, and of the network
// filters that may come before it, which are passed through to the
// engine's network filter registry as unpacked messages (as HTTP filters
// are): the engine rejects a type nothing registered, naming it.

import (
	"errors"
	"fmt"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	// Network filter types a registered compiler may take (linked so their
	// Anys decode; the engine decides whether anything handles them).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/wasm/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

// nameOriginalDstFilter is the original_dst listener filter: the listener
// restores connections' destinations from before an iptables redirect.
const nameOriginalDstFilter = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

// defaultTCPIdleTimeout is Envoy's tcp_proxy idle_timeout when unset.
const defaultTCPIdleTimeout = time.Hour

var (
	tcpProxyFields = knownFields(&tcpv3.TcpProxy{},
		"stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts", "access_log",
		"hash_policy", "max_downstream_connection_duration",
		// Ignored: access log flushing (observability) and the backoff
		// between connect attempts (tuning: attempts follow each other at
		// once).
		"access_log_flush_interval", "flush_access_log_on_connected", "access_log_options", "backoff_options")
	tcpWeightedFields = knownFields(&tcpv3.TcpProxy_WeightedCluster{}, "clusters")
	tcpClusterWeight  = knownFields(&tcpv3.TcpProxy_WeightedCluster_ClusterWeight{}, "name", "weight")
	tcpHashFields     = knownFields(&typev3.HashPolicy{}, "source_ip")
)

// translateTCPProxy translates a TcpProxy filter config.
func translateTCPProxy(m *tcpv3.TcpProxy) (*config.TCPProxy, error) {
	if err := tcpProxyFields.check(m); err != nil {
		return nil, err
	}
	out := &config.TCPProxy{StatPrefix: m.GetStatPrefix(), MaxConnectAttempts: int(u32(m.GetMaxConnectAttempts(), 1))}
	var err error
	if out.IdleTimeout, err = durationField(m.GetIdleTimeout(), defaultTCPIdleTimeout, "idle_timeout"); err != nil {
		return nil, err
	}
	if out.MaxConnectionDuration, err = durationField(m.GetMaxDownstreamConnectionDuration(), 0, "max_downstream_connection_duration"); err != nil {
		return nil, err
	}
	switch cs := m.GetClusterSpecifier().(type) {
	case *tcpv3.TcpProxy_Cluster:
		if cs.Cluster == "" {
			return nil, inField(errors.New("must not be empty"), "cluster")
		}
		out.Cluster = cs.Cluster
	case *tcpv3.TcpProxy_WeightedClusters:
		if err := tcpWeightedFields.check(cs.WeightedClusters); err != nil {
			return nil, inField(err, "weighted_clusters")
		}
		for i, cw := range cs.WeightedClusters.GetClusters() {
			if err := tcpClusterWeight.check(cw); err != nil {
				return nil, inField(inIndex(err, "clusters", i), "weighted_clusters")
			}
			out.WeightedClusters = append(out.WeightedClusters, &config.TCPWeightedCluster{Name: cw.GetName(), Weight: cw.GetWeight()})
		}
	default:
		return nil, errors.New("one of cluster or weighted_clusters is required")
	}
	for i, hp := range m.GetHashPolicy() {
		if err := tcpHashFields.check(hp); err != nil {
			return nil, inIndex(err, "hash_policy", i)
		}
		if hp.GetSourceIp() != nil {
			out.HashPolicy = append(out.HashPolicy, config.HashPolicy{SourceIP: true})
		}
	}
	if out.AccessLogs, err = translateAccessLogs(m.GetAccessLog()); err != nil {
		return nil, err
	}
	return out, nil
}

// translateFilters translates a filter chain's filters into out: any
// number of network filters, then one terminal filter, the HTTP
// connection manager or the TCP proxy, last.
func translateFilters(out *config.FilterChain, filters []*listenerv3.Filter, d *deps) error {
	for i, f := range filters {
		if err := translateNetworkFilter(out, f, i == len(filters)-1, d); err != nil {
			return at(err, segFieldEnd, fmt.Sprintf("filters[%d] (%s)", i, f.GetName()))
		}
	}
	if out.HTTP == nil && out.TCP == nil {
		return errors.New("filters: an http_connection_manager or tcp_proxy network filter is required")
	}
	return nil
}

// translateNetworkFilter translates one network filter: the HTTP
// connection manager and the TCP proxy are translated here; any other
// type keeps its unpacked message for the network filter compiler
// registered under its type URL.
func translateNetworkFilter(out *config.FilterChain, f *listenerv3.Filter, last bool, d *deps) error {
	if err := networkFilterFields.check(f); err != nil {
		return err
	}
	if u, ok, err := istioConfig(f.GetTypedConfig()); ok || err != nil {
		keep := false
		if err == nil {
			keep, err = istioNetworkFilter(u, d)
		}
		switch {
		case err != nil:
			return inField(err, "typed_config")
		case last:
			return fmt.Errorf("network filter type %q is not a terminal filter: the last network filter must be http_connection_manager or tcp_proxy", u.TypeURL)
		case keep:
			out.NetworkFilters = append(out.NetworkFilters, &config.NetworkFilter{Name: f.GetName(), TypeURL: u.TypeURL, Config: u})
		}
		return nil
	}
	t, err := unpack(f.GetTypedConfig())
	if err != nil {
		return inField(err, "typed_config")
	}
	switch m := t.msg.(type) {
	case *hcmv3.HttpConnectionManager:
		if !last {
			return errors.New("http_connection_manager is a terminal filter and must be the last network filter")
		}
		out.HTTP, err = translateHCM(m, d)
	case *tcpv3.TcpProxy:
		if !last {
			return errors.New("tcp_proxy is a terminal filter and must be the last network filter")
		}
		out.TCP, err = translateTCPProxy(m)
	default:
		if last {
			return fmt.Errorf("network filter type %q is not a terminal filter: the last network filter must be http_connection_manager or tcp_proxy", t.url)
		}
		out.NetworkFilters = append(out.NetworkFilters, &config.NetworkFilter{Name: f.GetName(), TypeURL: t.url, Config: t.msg})
	}
	return err
}

// checkTCPProxyClusters checks that the clusters a chain's TCP proxy names
// exist (CheckSnapshot, when every cluster is known).
func checkTCPProxyClusters(fc *config.FilterChain, clusters map[string]bool) error {
	if fc == nil || fc.TCP == nil {
		return nil
	}
	where := fmt.Sprintf("filters[%d] (envoy.filters.network.tcp_proxy)", len(fc.NetworkFilters))
	if c := fc.TCP.Cluster; c != "" && !clusters[c] {
		return at(inField(fmt.Errorf("unknown cluster %q", c), "cluster"), segFieldEnd, where)
	}
	for i, wc := range fc.TCP.WeightedClusters {
		if !clusters[wc.Name] {
			return at(inField(inIndex(fmt.Errorf("unknown cluster %q", wc.Name), "clusters", i), "weighted_clusters"), segFieldEnd, where)
		}
	}
	return nil
}
