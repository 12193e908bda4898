package xds

// Istio's own extensions. Istio's control plane puts filters of its own
// proxy build (istio/proxy) into the resources it sends: their protobuf
// types are not in go-control-plane, so they are recognised here by type
// URL, as an Any or inside a TypedStruct, without decoding, and each is
// given one of three treatments (samples/istio/README.md has the table):
//
//   - emulated natively: the config goes on as a *config.UndecodedConfig
//     to the compiler engine/filters/istio registers under the type URL
//     (istio.stats and the HTTP istio.metadata_exchange filters; the TCP
//     metadata exchange network filter on TCP proxy chains), or is applied
//     here (istio.alpn, see applyIstio);
//   - accepted and not run, where running it changes nothing Sluice does
//     (istio_authn, which only feeds Istio's ambient telemetry; the TCP
//     istio.stats network filter, whose TCP metrics Sluice does not keep;
//     the metadata exchange on HTTP chains and on clusters, where the
//     "istio-peer-exchange" ALPN protocol is then withdrawn so that no
//     peer starts an exchange Sluice would not answer);
//   - rejected, naming the type: any other type this build does not know.

import (
	"errors"
	"fmt"
	"slices"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// istioPeerExchangeALPN is the ALPN protocol with which two Istio proxies
// agree to exchange metadata in band at the start of a TCP connection.
const istioPeerExchangeALPN = "istio-peer-exchange"

// istioTypes are the Istio type URLs the translator knows.
var istioTypes = map[string]bool{
	config.TypeIstioALPN:             true,
	config.TypeIstioStats:            true,
	config.TypeIstioPeerMetadata:     true,
	config.TypeIstioMetadataExchange: true,
	config.TypeIstioNetworkAuthn:     true,
}

var clusterFilterFields = knownFields(&clusterv3.Filter{}, "name", "typed_config")

// istioConfig recognises an Istio filter config: an Any of one of Istio's
// types, or a TypedStruct describing one. ok is false for anything else
// (the caller unpacks it as usual).
func istioConfig(a *anypb.Any) (u *config.UndecodedConfig, ok bool, err error) {
	if a == nil {
		return nil, false, nil
	}
	url := typePrefix + string(a.MessageName())
	if istioTypes[url] {
		return &config.UndecodedConfig{TypeURL: url, Value: slices.Clone(a.GetValue())}, true, nil
	}
	var inner string
	var value interface{ AsMap() map[string]any }
	switch a.MessageName() {
	case "xds.type.v3.TypedStruct":
		ts := &xdstypev3.TypedStruct{}
		if err := proto.Unmarshal(a.GetValue(), ts); err != nil {
			return nil, false, nil // unpack reports it
		}
		inner, value = ts.GetTypeUrl(), ts.GetValue()
	case "udpa.type.v1.TypedStruct":
		ts := &udpatypev1.TypedStruct{}
		if err := proto.Unmarshal(a.GetValue(), ts); err != nil {
			return nil, false, nil
		}
		inner, value = ts.GetTypeUrl(), ts.GetValue()
	default:
		return nil, false, nil
	}
	url = typePrefix + string((&anypb.Any{TypeUrl: inner}).MessageName())
	if !istioTypes[url] {
		return nil, false, nil
	}
	u = &config.UndecodedConfig{TypeURL: url, Fields: map[string]any{}}
	if value != nil {
		if m := value.AsMap(); m != nil {
			u.Fields = m
		}
	}
	return u, true, nil
}

// typedStructURL returns the type URL a TypedStruct describes; ok is false
// for an Any that is not a TypedStruct.
func typedStructURL(a *anypb.Any) (string, bool) {
	switch a.MessageName() {
	case "xds.type.v3.TypedStruct":
		ts := &xdstypev3.TypedStruct{}
		if proto.Unmarshal(a.GetValue(), ts) == nil {
			return ts.GetTypeUrl(), true
		}
	case "udpa.type.v1.TypedStruct":
		ts := &udpatypev1.TypedStruct{}
		if proto.Unmarshal(a.GetValue(), ts) == nil {
			return ts.GetTypeUrl(), true
		}
	}
	return "", false
}

// nodeOf converts the bootstrap's node for Istio's filters.
func nodeOf(n *corev3.Node) *config.Node {
	if n == nil {
		return nil
	}
	out := &config.Node{ID: n.GetId(), Cluster: n.GetCluster()}
	if md := n.GetMetadata(); md != nil {
		out.Metadata = md.AsMap()
	}
	return out
}

// istioHTTPFilter checks an Istio HTTP filter's type and fills in what
// its native compiler needs.
func istioHTTPFilter(u *config.UndecodedConfig, d *deps) error {
	switch u.TypeURL {
	case config.TypeIstioALPN:
		if _, err := parseIstioALPN(u); err != nil {
			return err
		}
	case config.TypeIstioStats, config.TypeIstioPeerMetadata:
	default:
		return fmt.Errorf("%s is not an HTTP filter", u.TypeURL)
	}
	if d != nil {
		u.Node = d.node
	}
	return nil
}

// istioNetworkFilter translates an Istio network filter: keep (with its
// config for the native compiler) or drop (accepted and not run).
func istioNetworkFilter(u *config.UndecodedConfig, d *deps) (keep bool, _ error) {
	switch u.TypeURL {
	case config.TypeIstioMetadataExchange:
		if _, err := istioMXProtocol(u); err != nil {
			return false, err
		}
		if d != nil {
			u.Node = d.node
		}
		return true, nil
	case config.TypeIstioNetworkAuthn, config.TypeIstioStats:
		return false, nil
	}
	return false, fmt.Errorf("%s is not a network filter", u.TypeURL)
}

// istioMXProtocol returns the ALPN protocol of a metadata exchange
// config ("istio-peer-exchange" when unset).
func istioMXProtocol(u *config.UndecodedConfig) (string, error) {
	p := ""
	if u.Fields != nil {
		if v, ok := u.Fields["protocol"]; ok {
			s, ok := v.(string)
			if !ok {
				return "", inField(errors.New("not a string"), "protocol")
			}
			p = s
		}
	} else {
		err := walkProto(u.Value, func(num protowire.Number, typ protowire.Type, b []byte) error {
			if num == 1 && typ == protowire.BytesType {
				p = string(b)
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	if p == "" {
		p = istioPeerExchangeALPN
	}
	return p, nil
}

// withoutMX drops the metadata exchange network filters of an HTTP filter
// chain: network filters before the connection manager are not run (see
// docs/rationale.md), and on an HTTP chain the exchange only happens when
// the client negotiated "istio-peer-exchange", which is withdrawn from the
// chain's ALPN so no client does.
func withoutMX(fc *config.FilterChain) error {
	if fc.HTTP == nil {
		return nil
	}
	n := len(fc.NetworkFilters)
	fc.NetworkFilters = slices.DeleteFunc(fc.NetworkFilters, func(nf *config.NetworkFilter) bool {
		return nf.TypeURL == config.TypeIstioMetadataExchange
	})
	if len(fc.NetworkFilters) == n {
		return nil
	}
	if len(fc.NetworkFilters) == 0 {
		fc.NetworkFilters = nil
	}
	if fc.TLS != nil {
		fc.TLS.ALPN = slices.DeleteFunc(fc.TLS.ALPN, func(p string) bool { return p == istioPeerExchangeALPN })
	}
	return nil
}

// clusterFilters checks a cluster's upstream network filters. Only
// Istio's metadata exchange is accepted; it is not run, so the
// "istio-peer-exchange" ALPN protocol is withdrawn from the cluster's TLS
// contexts: a peer that negotiated it would send its metadata in band and
// expect Sluice's, and the application would see those bytes.
func clusterFilters(fs []*clusterv3.Filter, out *config.Cluster) error {
	for i, f := range fs {
		if err := clusterFilterFields.check(f); err != nil {
			return inIndex(err, "filters", i)
		}
		u, ok, err := istioConfig(f.GetTypedConfig())
		if err != nil {
			return inIndex(err, "filters", i)
		}
		if !ok || u.TypeURL != config.TypeIstioMetadataExchange {
			url := f.GetTypedConfig().GetTypeUrl()
			if inner, ok := typedStructURL(f.GetTypedConfig()); ok {
				url = inner
			}
			if u != nil {
				url = u.TypeURL
			}
			return inIndex(fmt.Errorf("upstream network filter %q (%s): %w", f.GetName(), url, ErrUnsupported), "filters", i)
		}
		if _, err := istioMXProtocol(u); err != nil {
			return inIndex(inField(err, "typed_config"), "filters", i)
		}
	}
	strip := func(t *config.UpstreamTLS) {
		if t != nil {
			t.ALPN = slices.DeleteFunc(t.ALPN, func(p string) bool { return p == istioPeerExchangeALPN })
		}
	}
	strip(out.TLS)
	for _, m := range out.TransportSocketMatches {
		strip(m.TLS)
	}
	return nil
}

// istioALPN is an istio.alpn config: the ALPN protocols to offer by
// upstream protocol.
type istioALPN struct {
	http10, http11, http2 []string
}

func (a *istioALPN) equal(b *istioALPN) bool {
	return slices.Equal(a.http10, b.http10) && slices.Equal(a.http11, b.http11) && slices.Equal(a.http2, b.http2)
}

// parseIstioALPN reads istio.envoy.config.filter.http.alpn.v2alpha1
// FilterConfig: repeated AlpnOverride alpn_override = 1, where
// AlpnOverride is { Protocol upstream_protocol = 1 (HTTP10, HTTP11,
// HTTP2); repeated string alpn_override = 2 }.
func parseIstioALPN(u *config.UndecodedConfig) (*istioALPN, error) {
	out := &istioALPN{}
	set := func(proto int64, list []string) error {
		switch proto {
		case 0:
			out.http10 = append(out.http10, list...)
		case 1:
			out.http11 = append(out.http11, list...)
		case 2:
			out.http2 = append(out.http2, list...)
		default:
			return fmt.Errorf("alpn_override: unknown upstream_protocol %d", proto)
		}
		return nil
	}
	if u.Fields != nil {
		v, _ := config.StructField(u.Fields, "alpn_override")
		list, ok := v.([]any)
		if v != nil && !ok {
			return nil, errors.New("alpn_override: not a list")
		}
		for i, e := range list {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("alpn_override[%d]: not an object", i)
			}
			var p int64
			switch x, _ := config.StructField(m, "upstream_protocol"); x {
			case nil, "HTTP10", float64(0):
			case "HTTP11", float64(1):
				p = 1
			case "HTTP2", float64(2):
				p = 2
			default:
				return nil, fmt.Errorf("alpn_override[%d]: unknown upstream_protocol %v", i, x)
			}
			var protos []string
			raw, _ := config.StructField(m, "alpn_override")
			items, ok := raw.([]any)
			if raw != nil && !ok {
				return nil, fmt.Errorf("alpn_override[%d].alpn_override: not a list", i)
			}
			for _, it := range items {
				s, ok := it.(string)
				if !ok {
					return nil, fmt.Errorf("alpn_override[%d].alpn_override: not a list of strings", i)
				}
				protos = append(protos, s)
			}
			if err := set(p, protos); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	err := walkProto(u.Value, func(num protowire.Number, typ protowire.Type, b []byte) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		var p int64
		var protos []string
		err := walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
			switch {
			case num == 1 && typ == protowire.VarintType:
				x, _ := protowire.ConsumeVarint(v)
				p = int64(x)
			case num == 2 && typ == protowire.BytesType:
				protos = append(protos, string(v))
			}
			return nil
		})
		if err != nil {
			return err
		}
		return set(p, protos)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// walkProto calls fn for each field of a serialized message: for varints
// v holds the varint's bytes, for length-delimited fields their content.
// Groups and fixed-size fields are skipped.
func walkProto(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		switch typ {
		case protowire.BytesType:
			c, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(m))
			}
			v, n = c, m
		case protowire.VarintType:
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(m))
			}
			v, n = b[:m], m
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return fmt.Errorf("decoding: %w", protowire.ParseError(m))
			}
			n = m
		}
		if err := fn(num, typ, v); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// applyIstio finishes a snapshot for Istio's filters:
//
//   - istio.alpn: Envoy's filter replaces, per request, the ALPN protocols
//     of the upstream TLS connection with a list chosen by the upstream
//     protocol (Istio's are "istio-http/1.1", "istio", "http/1.1" and
//     "istio-h2", "istio", "h2"), which is how the server sidecar tells
//     mTLS HTTP from raw TCP. Sluice's pools are per protocol, so the
//     lists become every TLS cluster's HTTP1ALPN and HTTP2ALPN; a cluster
//     whose "istio" metadata says alpn_override "false" (Istio's mark for
//     a DestinationRule's own TLS) is left alone, as by Envoy. The filter
//     itself is then dropped. Differences: the lists apply to all requests
//     to the cluster, not only to those that crossed a connection manager
//     with the filter (in Istio every sidecar HTTP listener has it); an
//     HTTP/1.0 request uses the HTTP/1.1 list.
//   - istio.stats and the HTTP metadata exchange learn their listener's
//     direction and every cluster's metadata.
func applyIstio(s *config.Snapshot) error {
	var alpn *istioALPN
	var where string
	var clusterMeta map[string]map[string]map[string]any
	for _, l := range s.Listeners {
		chains := l.FilterChains
		if l.DefaultFilterChain != nil {
			chains = append(slices.Clip(chains), l.DefaultFilterChain)
		}
		for _, fc := range chains {
			if fc.HTTP == nil {
				continue
			}
			var kept []*config.HTTPFilter
			for _, hf := range fc.HTTP.HTTPFilters {
				u, ok := hf.Config.(*config.UndecodedConfig)
				if !ok {
					kept = append(kept, hf)
					continue
				}
				if u.TypeURL == config.TypeIstioALPN {
					a, err := parseIstioALPN(u)
					if err != nil {
						return inNamed(fmt.Errorf("http filter %q: %w", hf.Name, err), "listener", l.Name)
					}
					if hf.Disabled {
						continue
					}
					if alpn != nil && !alpn.equal(a) {
						return inNamed(fmt.Errorf("http filter %q: an istio.alpn config differs from listener %q's: Sluice applies one per snapshot: %w",
							hf.Name, where, ErrUnsupported), "listener", l.Name)
					}
					alpn, where = a, l.Name
					continue
				}
				if clusterMeta == nil {
					clusterMeta = map[string]map[string]map[string]any{}
					for _, c := range s.Clusters {
						if c.Metadata != nil {
							clusterMeta[c.Name] = c.Metadata
						}
					}
				}
				u.TrafficDirection = l.TrafficDirection
				u.ClusterMetadata = clusterMeta
				kept = append(kept, hf)
			}
			fc.HTTP.HTTPFilters = kept
		}
	}
	if alpn == nil {
		return nil
	}
	for _, c := range s.Clusters {
		if v, _ := c.Metadata["istio"]["alpn_override"].(string); v == "false" {
			continue
		}
		set := func(t *config.UpstreamTLS) {
			if t == nil {
				return
			}
			if len(alpn.http11) > 0 {
				t.HTTP1ALPN = slices.Clone(alpn.http11)
			}
			if len(alpn.http2) > 0 {
				t.HTTP2ALPN = slices.Clone(alpn.http2)
			}
		}
		set(c.TLS)
		for _, m := range c.TransportSocketMatches {
			set(m.TLS)
		}
	}
	return nil
}
