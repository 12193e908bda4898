package xds

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestLoadBootstrapTLS(t *testing.T) {
	s, err := LoadBootstrapFile("testdata/good/tls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := s.Listeners[0]
	if len(l.FilterChains) != 2 || l.DefaultFilterChain == nil {
		t.Fatalf("%d filter chains, default %v", len(l.FilterChains), l.DefaultFilterChain)
	}
	internal, public := l.FilterChains[0], l.FilterChains[1]
	eq(t, "internal TLS", *internal.TLS, config.DownstreamTLS{
		Certificates: []config.Certificate{
			{Chain: config.DataSource{Filename: "/etc/sluice/internal.crt"}, Key: config.DataSource{Filename: "/etc/sluice/internal.key"}},
			{Chain: config.DataSource{Inline: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")},
				Key: config.DataSource{Inline: []byte("key")}},
		},
		ALPN:                     []string{"h2"},
		Params:                   config.TLSParams{MinVersion: "TLSv1_3", MaxVersion: "TLSv1_3"},
		ClientCA:                 config.DataSource{Filename: "/etc/sluice/clients-ca.pem"},
		RequireClientCertificate: true,
		ClientSubjectAltNames: []config.SANMatcher{
			{Kind: config.SANURI, Match: config.StringMatcher{Kind: config.MatchPrefix, Value: "spiffe://example.org/"}},
			{Kind: config.SANAny, Match: config.StringMatcher{Kind: config.MatchExact, Value: "client.internal"}},
		},
	})
	eq(t, "internal codec", internal.HTTP.Codec, config.CodecHTTP2)
	eq(t, "internal HTTP/2", internal.HTTP.HTTP2, config.HTTP2Options{MaxConcurrentStreams: 250, InitialStreamWindowSize: 1 << 20,
		InitialConnectionWindowSize: 4 << 20, ConnectionKeepaliveInterval: 30 * time.Second, ConnectionKeepaliveTimeout: 5 * time.Second})
	eq(t, "public TLS", *public.TLS, config.DownstreamTLS{
		Certificates: []config.Certificate{{Chain: config.DataSource{Filename: "/etc/sluice/public.crt"}, Key: config.DataSource{Filename: "/etc/sluice/public.key"}}},
		ALPN:         []string{"h2", "http/1.1"},
		Params:       config.TLSParams{MinVersion: "TLSv1_2", CipherSuites: []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"}},
	})
	eq(t, "public codec", public.HTTP.Codec, config.CodecAuto)
	eq(t, "public HTTP/2 defaults", public.HTTP.HTTP2, config.HTTP2Options{})
	if dc := l.DefaultFilterChain; dc.TLS != nil || dc.HTTP.Codec != config.CodecHTTP1 {
		t.Errorf("raw_buffer default chain: TLS %+v codec %s", dc.TLS, dc.HTTP.Codec)
	}

	clusters := map[string]*config.Cluster{}
	for _, c := range s.Clusters {
		clusters[c.Name] = c
	}
	h2 := clusters["h2"]
	eq(t, "h2 protocol", h2.Protocol, config.ProtocolHTTP2)
	eq(t, "h2 options", h2.HTTP2, config.HTTP2Options{MaxConcurrentStreams: 100, InitialStreamWindowSize: 65536,
		InitialConnectionWindowSize: 1 << 20, ConnectionKeepaliveInterval: 10 * time.Second, ConnectionKeepaliveTimeout: 2 * time.Second})
	eq(t, "h2 TLS", *h2.TLS, config.UpstreamTLS{
		SNI:             "backend.internal",
		CA:              config.DataSource{Filename: "/etc/sluice/backend-ca.pem"},
		Certificate:     &config.Certificate{Chain: config.DataSource{Filename: "/etc/sluice/client.crt"}, Key: config.DataSource{Filename: "/etc/sluice/client.key"}},
		ALPN:            []string{"h2"},
		Params:          config.TLSParams{MinVersion: "TLSv1_2", CipherSuites: []string{"ECDHE-RSA-AES256-GCM-SHA384"}},
		SubjectAltNames: []string{"backend.internal", "spiffe://example.org/ns/default/sa/backend"},
	})

	auto := clusters["auto"]
	eq(t, "auto protocol", auto.Protocol, config.ProtocolAuto)
	eq(t, "auto HTTP/2", auto.HTTP2, config.HTTP2Options{MaxConcurrentStreams: 50})
	eq(t, "auto TLS (auto_host_sni, untyped SAN matcher)", *auto.TLS, config.UpstreamTLS{
		SNI:             "api.example.com",
		CA:              config.DataSource{Inline: []byte("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n")},
		SubjectAltNames: []string{"api.example.com"},
	})

	ds := clusters["downstream"]
	eq(t, "downstream protocol", ds.Protocol, config.ProtocolDownstream)
	eq(t, "downstream HTTP/2", ds.HTTP2, config.HTTP2Options{InitialStreamWindowSize: 131072})
	if ds.TLS != nil {
		t.Errorf("downstream TLS %+v", ds.TLS)
	}

	legacy := clusters["legacy_h2"]
	eq(t, "legacy protocol", legacy.Protocol, config.ProtocolHTTP2)
	eq(t, "legacy HTTP/2", legacy.HTTP2, config.HTTP2Options{MaxConcurrentStreams: 10, ConnectionKeepaliveTimeout: time.Second})
	eq(t, "legacy TLS without common context", *legacy.TLS, config.UpstreamTLS{})
	eq(t, "protocol_selection", clusters["legacy_downstream"].Protocol, config.ProtocolDownstream)
	eq(t, "explicit http1", clusters["explicit_h1"].Protocol, config.ProtocolHTTP1)
}

// tlsBootstrap is a bootstrap whose listener has a plaintext chain and a
// second chain with the given transport socket, and whose cluster has the
// given extra fields (YAML at the cluster's indentation).
func tlsBootstrap(listenerSocket, clusterFields string) string {
	const hcm = `
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          %s
          rds: { route_config_name: r }
          http_filters:
          - { name: router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }`
	chain1 := fmt.Sprintf(hcm, "")
	chain2 := fmt.Sprintf(hcm, "")
	if strings.HasPrefix(listenerSocket, "hcm:") {
		chain2 = fmt.Sprintf(hcm, strings.TrimPrefix(listenerSocket, "hcm:"))
		listenerSocket = ""
	}
	return `static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 8443 } }
    filter_chains:
    - filter_chain_match: { server_names: [a.example.com] }` + chain1 + `
    - ` + listenerSocket + chain2 + `
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 443 } } }
` + clusterFields
}

// downstreamSocket is a filter chain transport_socket with a
// DownstreamTlsContext made of the given fields (flow YAML).
func downstreamSocket(fields string) string {
	return `transport_socket: { name: envoy.transport_sockets.tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, ` + fields + ` } }`
}

func upstreamSocket(fields string) string {
	return `    transport_socket: { name: envoy.transport_sockets.tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, ` + fields + ` } }
`
}

const (
	goodCert   = `{ certificate_chain: { filename: c.pem }, private_key: { filename: k.pem } }`
	h2Options  = `    typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, %s } }` + "\n"
	chainTS    = `listener "l": filter_chains[1].transport_socket.typed_config.`
	clusterTS  = `cluster "c": transport_socket.typed_config.`
	clusterOpt = `cluster "c": typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].`
)

func TestTranslateTLSErrors(t *testing.T) {
	tests := []struct {
		name        string
		listener    string // the second filter chain's transport socket, or "hcm:" and HCM fields
		cluster     string
		want        string // the whole error after "xds: t.yaml: "
		unsupported bool
	}{
		// Downstream.
		{name: "env var key", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [{ certificate_chain: { filename: c.pem }, private_key: { environment_variable: KEY } }] }`),
			want:     chainTS + `common_tls_context.tls_certificates[0].private_key.environment_variable: not supported yet`},
		{name: "unknown static secret",
			listener: downstreamSocket(`common_tls_context: { tls_certificate_sds_secret_configs: [{ name: server-cert }] }`),
			want:     chainTS + `common_tls_context.tls_certificate_sds_secret_configs[0]: unknown secret "server-cert": no sds_config and not in static_resources.secrets`},
		{name: "SDS certificate without the xDS client", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificate_sds_secret_configs: [{ name: server-cert, sds_config: { ads: {} } }] }`),
			want: chainTS + `common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: ` +
				`secret "server-cert" from SDS needs the xDS client (dynamic_resources.ads_config): not supported yet`},
		{name: "SDS validation without the xDS client", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `], validation_context_sds_secret_config: { name: ca, sds_config: { ads: {} } } }`),
			want: chainTS + `common_tls_context.validation_context_sds_secret_config.sds_config: ` +
				`secret "ca" from SDS needs the xDS client (dynamic_resources.ads_config): not supported yet`},
		{name: "combined validation (Istio) without the xDS client", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `], combined_validation_context: { default_validation_context: {}, validation_context_sds_secret_config: { name: ROOTCA, sds_config: { ads: {} } } } }`),
			want: chainTS + `common_tls_context.combined_validation_context.validation_context_sds_secret_config.sds_config: ` +
				`secret "ROOTCA" from SDS needs the xDS client (dynamic_resources.ads_config): not supported yet`},
		{name: "no certificate",
			listener: downstreamSocket(`common_tls_context: { alpn_protocols: [h2] }`),
			want:     chainTS + `common_tls_context: tls_certificates: a certificate is required`},
		{name: "no common context",
			listener: downstreamSocket(`require_client_certificate: true`),
			want:     chainTS + `common_tls_context: tls_certificates: a certificate is required`},
		{name: "chain without key",
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [{ certificate_chain: { filename: c.pem } }] }`),
			want:     chainTS + `common_tls_context.tls_certificates[0]: certificate_chain and private_key are required`},
		{name: "empty data source",
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [{ certificate_chain: { filename: c.pem }, private_key: {} }] }`),
			want:     chainTS + `common_tls_context.tls_certificates[0].private_key.specifier: value is required`},
		{name: "watched directory", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [{ certificate_chain: { filename: c.pem, watched_directory: { path: /etc } }, private_key: { filename: k.pem } }] }`),
			want:     chainTS + `common_tls_context.tls_certificates[0].certificate_chain.watched_directory: not supported yet`},
		{name: "password", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [{ certificate_chain: { filename: c.pem }, private_key: { filename: k.pem }, password: { inline_string: x } }] }`),
			want:     chainTS + `common_tls_context.tls_certificates[0].password: not supported yet`},
		{name: "require_sni", unsupported: true,
			listener: downstreamSocket(`require_sni: true, common_tls_context: { tls_certificates: [` + goodCert + `] }`),
			want:     chainTS + `require_sni: true: not supported yet`},
		{name: "session ticket keys", unsupported: true,
			listener: downstreamSocket(`session_ticket_keys: { keys: [{ inline_bytes: "AAAA" }] }, common_tls_context: { tls_certificates: [` + goodCert + `] }`),
			want:     chainTS + `session_ticket_keys: not supported yet`},
		{name: "ecdh curves", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_params: { ecdh_curves: [P-256] }, tls_certificates: [` + goodCert + `] }`),
			want:     chainTS + `common_tls_context.tls_params.ecdh_curves: not supported yet`},
		{name: "client SAN matching without a CA", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `], validation_context: { match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: a } }] } }`),
			want:     chainTS + `common_tls_context.validation_context: match_subject_alt_names without trusted_ca: not supported yet`},
		{name: "client SAN of type EMAIL", unsupported: true,
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `], validation_context: { trusted_ca: { filename: ca.pem }, match_typed_subject_alt_names: [{ san_type: EMAIL, matcher: { exact: a } }] } }`),
			want:     chainTS + `common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type: EMAIL: not supported yet`},
		{name: "client SAN without a pattern",
			listener: downstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `], validation_context: { trusted_ca: { filename: ca.pem }, match_subject_alt_names: [{ ignore_case: true }] } }`),
			want:     chainTS + `common_tls_context.validation_context.match_subject_alt_names[0].match_pattern: value is required`},
		{name: "unknown TLS version", listener: downstreamSocket(`common_tls_context: { tls_params: { tls_minimum_protocol_version: TLSv1_4 } }`),
			want: `static_resources.listeners[0].filter_chains[1].transport_socket.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version: invalid value for enum field tlsMinimumProtocolVersion: "TLSv1_4"`},
		{name: "upstream context on a listener",
			listener: `transport_socket: { name: tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext } }`,
			want: `listener "l": filter_chains[1].transport_socket: tls (type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext): ` +
				`a filter chain takes envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext or envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer`},

		// Connection manager.
		{name: "HTTP/3 codec", unsupported: true, listener: "hcm:codec_type: HTTP3",
			want: `listener "l": filter_chains[1].filters[0] (envoy.filters.network.http_connection_manager): codec_type: HTTP3: not supported yet`},
		{name: "HCM extended CONNECT", unsupported: true, listener: "hcm:http2_protocol_options: { allow_connect: true }",
			want: `listener "l": filter_chains[1].filters[0] (envoy.filters.network.http_connection_manager): http2_protocol_options.allow_connect: not supported yet`},
		{name: "HCM window too small", listener: "hcm:http2_protocol_options: { initial_stream_window_size: 100 }",
			want: `listener "l": filter_chains[1].filters[0] (envoy.filters.network.http_connection_manager): typed_config.http2_protocol_options.initial_stream_window_size: value must be inside range [65535, 2147483647]`},

		// Upstream TLS.
		{name: "SAN prefix", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { validation_context: { match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: a } }, { san_type: DNS, matcher: { prefix: b } }] } }`),
			want:    clusterTS + `common_tls_context.validation_context.match_typed_subject_alt_names[1].matcher: only a case-sensitive exact match is supported: not supported yet`},
		{name: "SAN ignore case", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { validation_context: { match_subject_alt_names: [{ exact: a, ignore_case: true }] } }`),
			want:    clusterTS + `common_tls_context.validation_context.match_subject_alt_names[0]: only a case-sensitive exact match is supported: not supported yet`},
		{name: "SAN type email", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { validation_context: { match_typed_subject_alt_names: [{ san_type: EMAIL, matcher: { exact: a@b } }] } }`),
			want:    clusterTS + `common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type: EMAIL: not supported yet`},
		{name: "two client certificates",
			cluster: upstreamSocket(`common_tls_context: { tls_certificates: [` + goodCert + `, ` + goodCert + `] }`),
			want:    clusterTS + `common_tls_context.tls_certificates: an upstream TLS context takes at most one client certificate`},
		{name: "upstream env var CA", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { validation_context: { trusted_ca: { environment_variable: CA } } }`),
			want:    clusterTS + `common_tls_context.validation_context.trusted_ca.environment_variable: not supported yet`},
		{name: "upstream SDS", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { tls_certificate_sds_secret_configs: [{ name: default, sds_config: { ads: {} } }] }`),
			want: clusterTS + `common_tls_context.tls_certificate_sds_secret_configs[0].sds_config: ` +
				`secret "default" from SDS needs the xDS client (dynamic_resources.ads_config): not supported yet`},
		{name: "system roots", unsupported: true,
			cluster: upstreamSocket(`common_tls_context: { validation_context: { system_root_certs: {} } }`),
			want:    clusterTS + `common_tls_context.validation_context.system_root_certs: not supported yet`},
		{name: "renegotiation", unsupported: true,
			cluster: upstreamSocket(`allow_renegotiation: true`),
			want:    clusterTS + `allow_renegotiation: not supported yet`},
		{name: "auto_host_sni with IP endpoints", unsupported: true,
			cluster: upstreamSocket(`auto_host_sni: true`),
			want:    clusterTS + `auto_host_sni: the endpoints do not all have the same host name (the SNI of a cluster is one name): not supported yet`},
		{name: "downstream context on a cluster",
			cluster: `    transport_socket: { name: tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext } }` + "\n",
			want: `cluster "c": transport_socket: tls (type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext): ` +
				`a cluster takes envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext or envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer`},
		{name: "transport_socket_matches",
			cluster: `    transport_socket_matches: [{ name: m, transport_socket: { name: tls, typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext } } }]` + "\n",
			want: `cluster "c": transport_socket_matches[0].transport_socket: tls (type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext): ` +
				`a cluster takes envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext or envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer`},

		// Upstream protocol.
		{name: "auto without TLS", cluster: fmt.Sprintf(h2Options, `auto_config: {}`),
			want: `cluster "c": the auto upstream protocol is chosen by ALPN and needs a TLS transport_socket`},
		{name: "explicit HTTP/3", unsupported: true, cluster: fmt.Sprintf(h2Options, `explicit_http_config: { http3_protocol_options: {} }`),
			want: clusterOpt + `explicit_http_config.http3_protocol_options: not supported yet`},
		{name: "auto with HTTP/3", unsupported: true, cluster: fmt.Sprintf(h2Options, `auto_config: { http3_protocol_options: {} }`),
			want: clusterOpt + `auto_config.http3_protocol_options: not supported yet`},
		{name: "HTTP/2 metadata", unsupported: true, cluster: fmt.Sprintf(h2Options, `use_downstream_protocol_config: { http2_protocol_options: { allow_metadata: true } }`),
			want: clusterOpt + `use_downstream_protocol_config.http2_protocol_options.allow_metadata: not supported yet`},
		{name: "auto_san_validation", unsupported: true, cluster: fmt.Sprintf(h2Options, `explicit_http_config: { http_protocol_options: {} }, upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }`),
			want: clusterOpt + `upstream_http_protocol_options.auto_san_validation: true: not supported yet`},
		{name: "typed options and protocol_selection",
			cluster: "    protocol_selection: USE_DOWNSTREAM_PROTOCOL\n" + fmt.Sprintf(h2Options, `explicit_http_config: { http2_protocol_options: {} }`),
			want: clusterOpt[:len(clusterOpt)-1] + `: may not be combined with the deprecated http2_protocol_options, common_http_protocol_options ` +
				`or protocol_selection cluster fields`},
		{name: "keepalive without timeout", cluster: "    http2_protocol_options: { connection_keepalive: { interval: 1s } }\n",
			want: `static_resources.clusters[0].http2_protocol_options.connection_keepalive.timeout: value is required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := tlsBootstrap(tt.listener, tt.cluster)
			s, err := LoadBootstrap([]byte(doc), "t.yaml")
			if err == nil {
				t.Fatalf("got a snapshot with %d listeners, want an error\n%s", len(s.Listeners), doc)
			}
			if got, want := err.Error(), "xds: t.yaml: "+tt.want; got != want {
				t.Errorf("error\n  %s\nwant\n  %s", got, want)
			}
			if got := errors.Is(err, ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v, want %v", got, tt.unsupported)
			}
		})
	}
	// The templates are good without the parts under test.
	if _, err := LoadBootstrap([]byte(tlsBootstrap(downstreamSocket(`common_tls_context: { tls_certificates: [`+goodCert+`] }`),
		upstreamSocket(`sni: x`))), "t.yaml"); err != nil {
		t.Errorf("template: %v", err)
	}
}
