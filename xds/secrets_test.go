package xds

import (
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

// Secrets named by TLS contexts, from static_resources.secrets; SDS ones
// go through the same code (see the ADS tests).
const secretsBootstrap = `
static_resources:
  secrets:
  - name: server-cert
    tls_certificate: { certificate_chain: { inline_string: CHAIN }, private_key: { filename: /etc/key.pem } }
  - name: ca
    validation_context: { trusted_ca: { inline_string: CA } }
  listeners:
  - name: https
    address: { socket_address: { address: 127.0.0.1, port_value: 8443 } }
    filter_chains:
    - transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs: [{ name: server-cert }]
            validation_context_sds_secret_config: { name: ca }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https
          route_config: { virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: backend } }] }] }
          http_filters: [{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]
  clusters:
  - name: backend
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          combined_validation_context:
            default_validation_context: { match_subject_alt_names: [{ exact: spiffe://backend }] }
            validation_context_sds_secret_config: { name: ca }
    load_assignment: { cluster_name: backend, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9000 } } } }] }] }
`

func TestStaticSecrets(t *testing.T) {
	s, err := LoadBootstrap([]byte(secretsBootstrap), "s.yaml")
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "downstream TLS", *s.Listeners[0].FilterChains[0].TLS, config.DownstreamTLS{
		Certificates:             []config.Certificate{{Chain: config.DataSource{Inline: []byte("CHAIN")}, Key: config.DataSource{Filename: "/etc/key.pem"}}},
		ClientCA:                 config.DataSource{Inline: []byte("CA")},
		RequireClientCertificate: true,
	})
	// Istio's combined context: the secret's CA merged with the default's
	// subject alt names.
	eq(t, "upstream TLS", *s.Clusters[0].TLS, config.UpstreamTLS{CA: config.DataSource{Inline: []byte("CA")},
		SubjectAltNames: []string{"spiffe://backend"}})

	for _, tt := range []struct{ name, from, to, want string }{
		{"duplicate", "  - name: ca\n", "  - name: server-cert\n", `static_resources.secrets[1]: duplicate secret name "server-cert"`},
		{"certificate from a CA secret", "tls_certificate_sds_secret_configs: [{ name: server-cert }]", "tls_certificate_sds_secret_configs: [{ name: ca }]",
			`common_tls_context.tls_certificate_sds_secret_configs[0]: secret "ca": a tls_certificate is required`},
		{"bad certificate in a secret", "certificate_chain: { inline_string: CHAIN }, ", "",
			`tls_certificate_sds_secret_configs[0]: secret "server-cert": tls_certificate: certificate_chain and private_key are required`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadBootstrap([]byte(strings.Replace(secretsBootstrap, tt.from, tt.to, 1)), "s.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n  %v\nwant\n  %s", err, tt.want)
			}
		})
	}
}
