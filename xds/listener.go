package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

var (
	listenerFields = knownFields(&listenerv3.Listener{},
		"name", "address", "filter_chains", "default_filter_chain", "per_connection_buffer_limit_bytes",
		"listener_filters", "bind_to_port", "use_original_dst",
		// traffic_direction picks the listeners /drain_listeners?inboundonly
		// drains. Ignored: observability (stat_prefix, metadata, the access
		// log of connections no filter chain took) and socket or accept-loop
		// tuning.
		"stat_prefix", "metadata", "traffic_direction", "access_log", "listener_filters_timeout",
		"continue_on_listener_filters_timeout", "drain_type", "reuse_port", "enable_reuse_port",
		"tcp_backlog_size", "connection_balance_config", "max_connections_to_accept_per_socket_event",
		"ignore_global_conn_limit", "bypass_overload_manager", "tcp_keepalive", "tcp_fast_open_queue_length",
		"per_connection_buffer_high_watermark_timeout")
	filterChainFields = knownFields(&listenerv3.FilterChain{},
		"filter_chain_match", "filters", "transport_socket", "name",
		// Ignored: metadata, and the TLS handshake timeout: the config model
		// has no field for it, the engine bounds handshakes itself.
		"metadata", "transport_socket_connect_timeout")
	filterChainMatchFields = knownFields(&listenerv3.FilterChainMatch{},
		"destination_port", "prefix_ranges", "source_prefix_ranges", "server_names", "transport_protocol",
		"application_protocols")
	networkFilterFields = knownFields(&listenerv3.Filter{}, "name", "typed_config")
	// filter_disabled turns an inspector off for some connections; Sluice
	// inspects a connection only when a filter chain match needs it, so
	// it is ignored.
	listenerFilterFields = knownFields(&listenerv3.ListenerFilter{}, "name", "typed_config", "filter_disabled")
	transportSocketField = knownFields(&corev3.TransportSocket{}, "name", "typed_config")
)

// TranslateListener checks a Listener's validation rules and translates it.
func TranslateListener(l *listenerv3.Listener) (*config.Listener, error) {
	if l == nil {
		return nil, prefixed(errors.New("nil listener"))
	}
	if err := validateMsg(l); err != nil {
		return nil, prefixed(inNamed(err, "listener", l.GetName()))
	}
	out, err := translateListener(l, nil)
	if err != nil {
		return nil, prefixed(inNamed(err, "listener", l.GetName()))
	}
	return out, nil
}

func translateListener(l *listenerv3.Listener, d *deps) (*config.Listener, error) {
	if err := listenerFields.check(l); err != nil {
		return nil, err
	}
	addr, err := hostPort(l.GetAddress())
	if err != nil {
		return nil, inField(err, "address")
	}
	out := &config.Listener{
		Name:                     listenerName(l),
		Address:                  addr,
		PerConnectionBufferLimit: int(u32(l.GetPerConnectionBufferLimitBytes(), 0)),
		UseOriginalDst:           boolean(l.GetUseOriginalDst(), false),
		NoBind:                   !boolean(l.GetBindToPort(), true),
	}
	switch l.GetTrafficDirection() {
	case corev3.TrafficDirection_INBOUND:
		out.TrafficDirection = config.TrafficInbound
	case corev3.TrafficDirection_OUTBOUND:
		out.TrafficDirection = config.TrafficOutbound
	}
	for i, lf := range l.GetListenerFilters() {
		origDst, err := checkListenerFilter(lf)
		if err != nil {
			return nil, at(err, segFieldEnd, fmt.Sprintf("listener_filters[%d] (%s)", i, lf.GetName()))
		}
		out.OriginalDst = out.OriginalDst || origDst
	}
	// Envoy runs the original_dst listener filter on a use_original_dst
	// listener even when it is not listed (Istio's virtualOutbound lists
	// none): the hand-off needs the destination from before the redirect.
	out.OriginalDst = out.OriginalDst || out.UseOriginalDst
	seen := map[string]int{}
	for i, fc := range l.GetFilterChains() {
		c, err := translateFilterChain(fc, d)
		if err != nil {
			return nil, inIndex(err, "filter_chains", i)
		}
		key := matchKey(&c.Match)
		if j, dup := seen[key]; dup {
			return nil, inIndex(fmt.Errorf("filter_chain_match is the same as filter_chains[%d]'s", j), "filter_chains", i)
		}
		seen[key] = i
		out.FilterChains = append(out.FilterChains, c)
	}
	if dc := l.GetDefaultFilterChain(); dc != nil {
		c, err := translateFilterChain(dc, d)
		if err != nil {
			return nil, inField(err, "default_filter_chain")
		}
		out.DefaultFilterChain = c
	}
	if len(out.FilterChains) == 0 && out.DefaultFilterChain == nil {
		return nil, errors.New("no filter chains: filter_chains or default_filter_chain is required")
	}
	return out, nil
}

// checkListenerFilter accepts the inspectors whose results filter chain
// matching uses (the listener inspects TLS ClientHello and the first HTTP
// bytes on its own when a chain matches on server_names,
// transport_protocol or application_protocols) and original_dst, which it
// reports; any other listener filter is rejected.
func checkListenerFilter(lf *listenerv3.ListenerFilter) (originalDst bool, _ error) {
	if err := listenerFilterFields.check(lf); err != nil {
		return false, err
	}
	t, err := unpack(lf.GetTypedConfig())
	if err != nil {
		return false, inField(err, "typed_config")
	}
	switch t.name() {
	case nameTLSInspector, nameHTTPInspector:
		return false, nil
	case nameOriginalDstFilter:
		// Its traffic_direction only matters on Windows.
		return true, nil
	}
	return false, fmt.Errorf("listener filter type %q: %w", t.url, ErrUnsupported)
}

func translateFilterChain(fc *listenerv3.FilterChain, d *deps) (*config.FilterChain, error) {
	if err := filterChainFields.check(fc); err != nil {
		return nil, err
	}
	out := &config.FilterChain{Name: fc.GetName()}
	if ts := fc.GetTransportSocket(); ts != nil {
		t, err := transportSocket(ts)
		if err != nil {
			return nil, inField(err, "transport_socket")
		}
		switch m := t.msg.(type) {
		case nil:
		case *tlsv3.DownstreamTlsContext:
			if out.TLS, err = downstreamTLS(m, d); err != nil {
				return nil, inField(inField(err, "typed_config"), "transport_socket")
			}
		default:
			return nil, inField(fmt.Errorf("%s (%s): a filter chain takes %s or %s", ts.GetName(), t.url,
				nameDownstreamTLS, nameRawBuffer), "transport_socket")
		}
	}
	if m := fc.GetFilterChainMatch(); m != nil {
		match, err := translateFilterChainMatch(m)
		if err != nil {
			return nil, inField(err, "filter_chain_match")
		}
		out.Match = match
	}
	if err := translateFilters(out, fc.GetFilters(), d); err != nil {
		return nil, err
	}
	if err := withoutMX(out); err != nil {
		return nil, err
	}
	return out, nil
}

// transportSocket unpacks a transport socket's config: a zero typed (msg
// nil) for plaintext (raw_buffer), else a TLS context for the caller to
// translate. Any other transport socket is rejected: serving or sending
// plaintext where something else was configured would be a security bug.
func transportSocket(ts *corev3.TransportSocket) (typed, error) {
	if err := transportSocketField.check(ts); err != nil {
		return typed{}, err
	}
	t, err := unpack(ts.GetTypedConfig())
	if err != nil {
		return typed{}, inField(err, "typed_config")
	}
	switch t.name() {
	case nameRawBuffer:
		return typed{}, nil
	case nameDownstreamTLS, nameUpstreamTLS:
		return t, nil
	}
	return typed{}, fmt.Errorf("%s (%s): %w", ts.GetName(), t.url, ErrUnsupported)
}

func translateFilterChainMatch(m *listenerv3.FilterChainMatch) (config.FilterChainMatch, error) {
	var out config.FilterChainMatch
	if err := filterChainMatchFields.check(m); err != nil {
		return out, err
	}
	out.DestinationPort = u32(m.GetDestinationPort(), 0)
	out.ServerNames = slices.Clone(m.GetServerNames())
	out.TransportProtocol = m.GetTransportProtocol()
	out.ApplicationProtocols = slices.Clone(m.GetApplicationProtocols())
	var err error
	if out.PrefixRanges, err = cidrs(m.GetPrefixRanges(), "prefix_ranges"); err != nil {
		return out, err
	}
	if out.SourcePrefixRanges, err = cidrs(m.GetSourcePrefixRanges(), "source_prefix_ranges"); err != nil {
		return out, err
	}
	return out, nil
}

func cidrs(rs []*corev3.CidrRange, field string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, r := range rs {
		p, err := cidr(r)
		if err != nil {
			return nil, inIndex(err, field, i)
		}
		out = append(out, p)
	}
	return out, nil
}

// cidr translates a CidrRange; an unset prefix_len is 0, like Envoy.
func cidr(r *corev3.CidrRange) (netip.Prefix, error) {
	addr, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, inField(fmt.Errorf("%q is not an IP address", r.GetAddressPrefix()), "address_prefix")
	}
	bits := u32(r.GetPrefixLen(), 0)
	if bits > uint32(addr.BitLen()) {
		return netip.Prefix{}, inField(fmt.Errorf("%d is more than %d bits", bits, addr.BitLen()), "prefix_len")
	}
	return netip.PrefixFrom(addr, int(bits)).Masked(), nil
}

// matchKey is a canonical form of a filter chain match, to find chains that
// match exactly the same connections.
func matchKey(m *config.FilterChainMatch) string {
	sorted := func(in []string) string {
		s := slices.Clone(in)
		slices.Sort(s)
		return strings.Join(slices.Compact(s), ",")
	}
	prefixes := func(in []netip.Prefix) string {
		s := make([]string, len(in))
		for i, p := range in {
			s[i] = p.String()
		}
		return sorted(s)
	}
	return fmt.Sprintf("%d|%s|%s|%s|%s|%s", m.DestinationPort, sorted(m.ServerNames), m.TransportProtocol,
		sorted(m.ApplicationProtocols), prefixes(m.PrefixRanges), prefixes(m.SourcePrefixRanges))
}

// listenerName is a listener's name or, for an unnamed (static) listener,
// one made from its address as Istio names its listeners
// ("0.0.0.0_15090"): Envoy names those itself, and the engine needs a
// name to keep a listener across reloads.
func listenerName(l *listenerv3.Listener) string {
	if l.GetName() != "" {
		return l.GetName()
	}
	sa := l.GetAddress().GetSocketAddress()
	return fmt.Sprintf("%s_%d", sa.GetAddress(), sa.GetPortValue())
}
