package xds

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Istio's bootstrap (pilot-agent's envoy-rev.json) loads: its statics
// translate, its process settings are accepted, its pipes become unix
// endpoints, and the xDS client takes it.
// The bootstrap pilot-agent's own code wrote (testdata/istio-generated,
// tools/istiogen) loads as the hand-written one does; its prometheus
// listener's compressor filters are accepted and not run.
func TestIstioGeneratedBootstrap(t *testing.T) {
	s, err := LoadBootstrapFile("testdata/istio-generated/envoy-rev.json")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range s.Listeners {
		names = append(names, l.Name)
		for _, fc := range l.FilterChains {
			if fc.HTTP == nil {
				t.Fatalf("listener %s: not HTTP", l.Name)
			}
			for _, f := range fc.HTTP.HTTPFilters {
				if strings.Contains(f.TypeURL, "compressor") {
					t.Errorf("listener %s runs %s", l.Name, f.TypeURL)
				}
			}
		}
	}
	eqSlice(t, "listeners", names, []string{"0.0.0.0_15090", "0.0.0.0_15021"})
	eps := map[string]string{}
	for _, c := range s.Clusters {
		eps[c.Name] = c.Endpoints[0].Address
	}
	eq(t, "sds-grpc", eps["sds-grpc"], "unix:./var/run/secrets/workload-spiffe-uds/socket")
	eq(t, "xds-grpc", eps["xds-grpc"], "unix:./etc/istio/proxy/XDS")
}

func TestIstioBootstrap(t *testing.T) {
	data, err := os.ReadFile("testdata/istio/envoy-rev.json")
	if err != nil {
		t.Fatal(err)
	}
	s, b, err := LoadBootstrapWith(data, "envoy-rev.json", DecodeOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range s.Listeners {
		names = append(names, l.Name)
	}
	eqSlice(t, "listeners", names, []string{"0.0.0.0_15090", "0.0.0.0_15021"})
	eps := map[string]string{}
	for _, c := range s.Clusters {
		eps[c.Name] = c.Endpoints[0].Address
	}
	eq(t, "sds-grpc", eps["sds-grpc"], "unix:./var/run/secrets/workload-spiffe-uds/socket")
	eq(t, "xds-grpc", eps["xds-grpc"], "unix:./etc/istio/proxy/XDS")
	eq(t, "admin", s.Admin.Address, "127.0.0.1:15000")
	if !s.DynamicClusters {
		t.Error("clusters from CDS not noted")
	}
	c, err := NewClient(ClientOptions{Bootstrap: b, Apply: func(*config.Snapshot) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.State(); st.Target != "unix:./etc/istio/proxy/XDS" || !st.Delta {
		t.Errorf("client state %+v", st)
	}

	// What is refused, and how.
	for _, tc := range []struct{ edit, want string }{
		{`"hds_config": {"api_type": "GRPC"},`, `xds: t.json: hds_config: not supported yet`},
		{`"bootstrap_extensions": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": "type.googleapis.com/acme.Ext"}}],`,
			`xds: t.json: bootstrap_extensions[0]: extension "x" (type.googleapis.com/acme.Ext): not supported yet`},
		{`"cluster_manager": {"load_stats_config": {"api_type": "GRPC"}},`, `xds: t.json: cluster_manager.load_stats_config: not supported yet`},
	} {
		doc := strings.Replace(string(data), `"layered_runtime"`, tc.edit+`"layered_runtime"`, 1)
		doc = strings.Replace(doc, `"bootstrap_extensions": [`, `"bootstrap_extensions_": [`, strings.Count(tc.edit, "bootstrap_extensions"))
		doc = strings.Replace(doc, `"bootstrap_extensions_": [`, `"x_": [`, 1)
		_, err := LoadBootstrap([]byte(strings.Replace(doc, `"x_": [`, `"bootstrap_extensions": [`, 0)), "t.json")
		if tc.edit[1:10] == "bootstrap" {
			// The file has its own bootstrap_extensions: replace them.
			doc = strings.Replace(string(data), `"bootstrap_extensions": [`, `"bootstrap_extensions": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": "type.googleapis.com/acme.Ext"}},`, 1)
			_, err = LoadBootstrap([]byte(doc), "t.json")
		}
		if err == nil || !errors.Is(err, ErrUnsupported) || err.Error() != tc.want {
			t.Errorf("%s: %v, want %s", tc.edit, err, tc.want)
		}
	}
}

// istioDoc is a bootstrap with one listener whose chain has the given
// network filters before an HCM with the given HTTP filters, and clusters.
func istioDoc(networkFilters, httpFilters, hcmExtra, clusters string) string {
	return fmt.Sprintf(`
node: { id: sidecar~10.0.0.1~a.default~default.svc.cluster.local, metadata: { WORKLOAD_NAME: a, NAMESPACE: default } }
static_resources:
  listeners:
  - name: l
    traffic_direction: OUTBOUND
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:%s
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s%s
          route_config: { virtual_hosts: [{ name: v, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: c } }] }] }
          http_filters:%s
          - { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
  clusters:
  - name: c
    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } } }] }] }%s
`, networkFilters, hcmExtra, httpFilters, clusters)
}

const (
	tsStats = `
          - name: istio.stats
            typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: { disable_host_header_fallback: true } }`
	tsALPN = `
          - name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/xds.type.v3.TypedStruct
              type_url: type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              value: { alpn_override: [{ upstream_protocol: HTTP11, alpn_override: [istio-http/1.1, istio] }, { upstream_protocol: HTTP2, alpn_override: [istio-h2, istio] }] }`
	mxNetwork = `
      - name: istio.metadata_exchange
        typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: { protocol: istio-peer-exchange } }
      - name: istio_authn
        typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config }`
	tlsCluster = `
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: { alpn_protocols: [istio-peer-exchange, istio] }`
)

// Istio's filters are accepted by type URL: istio.alpn becomes the TLS
// clusters' HTTP ALPN, istio.stats goes to its compiler with the node,
// the listener's direction and the clusters' metadata, the metadata
// exchange before an HTTP connection manager is dropped, and HCM
// features become filters first in the chain.
func TestIstioFilters(t *testing.T) {
	clusters := tlsCluster + `
  - name: own-tls
    metadata: { filter_metadata: { istio: { alpn_override: "false" } } }
    load_assignment: { cluster_name: own-tls, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 443 } } } }] }] }` + tlsCluster + `
    filters:
    - name: istio.metadata_exchange
      typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange }`
	hcmExtra := `
          normalize_path: true
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: { uri: true }
          upgrade_configs: [{ upgrade_type: websocket }]`
	s, err := LoadBootstrap([]byte(istioDoc(mxNetwork, tsStats+tsALPN, hcmExtra, clusters)), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fc := s.Listeners[0].FilterChains[0]
	if len(fc.NetworkFilters) != 0 {
		t.Errorf("network filters before the HCM: %+v", fc.NetworkFilters)
	}
	var types []string
	for _, f := range fc.HTTP.HTTPFilters {
		types = append(types, f.TypeURL)
	}
	eqSlice(t, "http filters", types, []string{config.TypeNormalizePath, config.TypeForwardClientCert, config.TypeIstioStats})
	u := fc.HTTP.HTTPFilters[2].Config.(*config.UndecodedConfig)
	eq(t, "stats direction", u.TrafficDirection, config.TrafficOutbound)
	eq(t, "stats node", u.Node.Metadata["WORKLOAD_NAME"], any("a"))
	eq(t, "stats fields", u.Fields, map[string]any{"disable_host_header_fallback": true})
	eq(t, "cluster metadata", u.ClusterMetadata["own-tls"]["istio"]["alpn_override"], any("false"))
	eq(t, "xfcc", *fc.HTTP.HTTPFilters[1].Config.(*config.ForwardClientCertConfig), config.ForwardClientCertConfig{Mode: "APPEND_FORWARD", URI: true})
	c, own := s.Clusters[0], s.Clusters[1]
	eqSlice(t, "c http/1 alpn", c.TLS.HTTP1ALPN, []string{"istio-http/1.1", "istio"})
	eqSlice(t, "c h2 alpn", c.TLS.HTTP2ALPN, []string{"istio-h2", "istio"})
	eqSlice(t, "c alpn", c.TLS.ALPN, []string{"istio-peer-exchange", "istio"})
	if own.TLS.HTTP1ALPN != nil {
		t.Error("alpn_override false: ALPN overridden")
	}
	// Its metadata exchange filter is not run: no peer may start one.
	eqSlice(t, "own-tls alpn", own.TLS.ALPN, []string{"istio"})

	// The serialized form istiod sends for istio.alpn.
	var v []byte
	o := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)
	o = protowire.AppendString(protowire.AppendTag(o, 2, protowire.BytesType), "istio-http/1.1")
	v = protowire.AppendBytes(protowire.AppendTag(v, 1, protowire.BytesType), o)
	a := &anypb.Any{TypeUrl: config.TypeIstioALPN, Value: v}
	parsed, err := parseIstioALPN(&config.UndecodedConfig{TypeURL: config.TypeIstioALPN, Value: a.GetValue()})
	if err != nil || len(parsed.http11) != 1 || parsed.http11[0] != "istio-http/1.1" || parsed.http2 != nil {
		t.Fatalf("binary alpn: %+v %v", parsed, err)
	}
	hf, _, err := translateHTTPFilter(&hcmv3.HttpFilter{Name: "istio.alpn", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil)
	if err != nil || hf.TypeURL != config.TypeIstioALPN {
		t.Fatalf("binary alpn filter: %+v %v", hf, err)
	}

	// An unknown type is refused, naming it, unless optional; an Istio
	// network type is no HTTP filter.
	unknown := `
          - name: acme.filter
            typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/acme.Filter }`
	_, err = LoadBootstrap([]byte(istioDoc("", unknown, "", "")), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), `http_filters[0] (acme.filter): typed_config.type_url: unknown type "type.googleapis.com/acme.Filter": not linked into sluice`) {
		t.Errorf("unknown filter: %v", err)
	}
	optional := `
          - name: acme.filter
            is_optional: true
            typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/acme.Filter }`
	if _, err := LoadBootstrap([]byte(istioDoc("", optional, "", "")), "t.yaml"); err != nil {
		t.Errorf("optional unknown filter: %v", err)
	}
	mxHTTP := `
          - name: mx
            typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange }`
	_, err = LoadBootstrap([]byte(istioDoc("", mxHTTP, "", "")), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "envoy.tcp.metadataexchange.config.MetadataExchange is not an HTTP filter") {
		t.Errorf("network filter as HTTP filter: %v", err)
	}
	// Filters Istio adds that do nothing empty; the fault and CORS filters
	// stay in the chain, empty, for the faults and policies routes
	// configure.
	noop := `
          - { name: envoy.filters.http.grpc_stats, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true } }
          - { name: envoy.filters.http.fault, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault } }
          - { name: envoy.filters.http.cors, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors } }`
	s, err = LoadBootstrap([]byte(istioDoc("", noop, "", "")), "t.yaml")
	if err != nil {
		t.Fatalf("no-op filters: %v", err)
	}
	if hfs := s.Listeners[0].FilterChains[0].HTTP.HTTPFilters; len(hfs) != 2 || hfs[0].Name != "envoy.filters.http.fault" ||
		hfs[0].TypeURL != "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault" ||
		hfs[1].Name != "envoy.filters.http.cors" || hfs[1].TypeURL != "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" {
		t.Errorf("no-op filters: %+v, want the fault and CORS filters", hfs)
	}
	fault := `
          - { name: envoy.filters.http.fault, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: { http_status: 503, percentage: { numerator: 100 } } } }`
	if _, err := LoadBootstrap([]byte(istioDoc("", fault, "", "")), "t.yaml"); err != nil {
		t.Errorf("fault: %v", err)
	}
}

// Istio's cluster shapes: pipes, transport socket matches chosen by
// endpoint metadata, upstream_bind_config; Istio's route durations.
func TestIstioClusters(t *testing.T) {
	doc := func(clusters string) string {
		return fmt.Sprintf(`
static_resources:
  clusters:%s
`, clusters)
	}
	s, err := LoadBootstrap([]byte(doc(`
  - name: m
    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 0 } }
    transport_socket_matches:
    - name: tlsMode-istio
      match: { tlsMode: istio }
      transport_socket: { name: tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: s } }
    - name: tlsMode-disabled
      match: {}
      transport_socket: { name: raw, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer } }
    load_assignment:
      cluster_name: m
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } }
          metadata: { filter_metadata: { envoy.transport_socket_match: { tlsMode: istio } } }
        - endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 80 } } }
      - metadata: { filter_metadata: { envoy.transport_socket_match: { tlsMode: istio } } }
        lb_endpoints:
        - endpoint: { address: { pipe: { path: "@agent" } } }`)), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := s.Clusters[0]
	eq(t, "source address", c.SourceAddress, "127.0.0.6")
	var got []string
	for _, ep := range c.Endpoints {
		got = append(got, ep.Address+" "+ep.TransportSocket)
	}
	eqSlice(t, "endpoints", got, []string{"10.0.0.1:80 tlsMode-istio", "10.0.0.2:80 tlsMode-disabled", "unix:@agent tlsMode-istio"})
	eq(t, "match tls", c.TransportSocketMatches[0].TLS.SNI, "s")
	if c.TransportSocketMatches[1].TLS != nil {
		t.Error("raw_buffer match has TLS")
	}

	for _, tc := range []struct{ cluster, want string }{
		{`
  - name: d
    type: STRICT_DNS
    load_assignment: { cluster_name: d, endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: /s } } } }] }] }`,
			`cluster "d": load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe: a STRICT_DNS cluster resolves host names; a pipe endpoint needs a STATIC or EDS cluster`},
		{`
  - name: b
    upstream_bind_config: { source_address: { address: 127.0.0.6, port_value: 5 } }`,
			`cluster "b": upstream_bind_config.source_address: port_value 5: not supported yet (the source port is always chosen by the system)`},
		{`
  - name: f
    filters: [{ name: acme, typed_config: { "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/acme.Up } }]`,
			`cluster "f": filters[0]: upstream network filter "acme" (type.googleapis.com/acme.Up): not supported yet`},
	} {
		_, err := LoadBootstrap([]byte(doc(tc.cluster)), "t.yaml")
		if err == nil || err.Error() != "xds: t.yaml: "+tc.want {
			t.Errorf("got %v\nwant %s", err, tc.want)
		}
	}
}

func TestIstioRouteDurations(t *testing.T) {
	rc := func(action string) (*config.RouteAction, error) {
		s, err := LoadBootstrap([]byte(strings.Replace(istioDoc("", "", "", ""), "route: { cluster: c }", "route: { cluster: c, "+action+" }", 1)), "t.yaml")
		if err != nil {
			return nil, err
		}
		return s.Listeners[0].FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes[0].Action, nil
	}
	for _, tc := range []struct {
		action string
		want   time.Duration
	}{
		{`timeout: 0s, max_stream_duration: { max_stream_duration: 0s, grpc_timeout_header_max: 0s }`, 0},
		{`timeout: 2s, max_stream_duration: { max_stream_duration: 2s, grpc_timeout_header_max: 2s }`, 2 * time.Second},
		{`timeout: 0s, max_stream_duration: { max_stream_duration: 3s }`, 3 * time.Second},
		{`timeout: 0s, max_grpc_timeout: 0s`, 0},
	} {
		a, err := rc(tc.action)
		if err != nil || a.Timeout != tc.want {
			t.Errorf("%s: %v %v, want timeout %v", tc.action, a, err, tc.want)
		}
	}
	if _, err := rc(`timeout: 2s, max_stream_duration: { grpc_timeout_header_max: 5s }`); !errors.Is(err, ErrUnsupported) {
		t.Errorf("a grpc-timeout cap other than the timeout: %v", err)
	}
}

// use_original_dst implies the original_dst listener filter, as in Envoy
// (Istio's virtualOutbound lists none).
func TestUseOriginalDstImpliesFilter(t *testing.T) {
	doc := strings.Replace(istioDoc("", "", "", ""), "    traffic_direction: OUTBOUND", "    traffic_direction: OUTBOUND\n    use_original_dst: true", 1)
	s, err := LoadBootstrap([]byte(doc), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if l := s.Listeners[0]; !l.UseOriginalDst || !l.OriginalDst {
		t.Fatalf("use_original_dst %v, original_dst %v", l.UseOriginalDst, l.OriginalDst)
	}
}
