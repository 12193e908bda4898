package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/xds"
)

// rbacBootstrap has a plain listener whose HCM runs Lua (which reports the
// RBAC filter's dynamic metadata in response headers), the RBAC filter and
// the router, and an mTLS listener that authorizes by peer identity.
const rbacBootstrap = `
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: %[6]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_app
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_response(h)
                    local md = h:streamInfo():dynamicMetadata():get("envoy.filters.http.rbac")
                    if md then
                      h:headers():add("x-rbac-result", tostring(md["enforced_engine_result"]))
                      h:headers():add("x-rbac-policy", tostring(md["enforced_effective_policy_id"]))
                      h:headers():add("x-rbac-shadow", tostring(md["shadow_engine_result"]))
                    end
                  end
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "ns[default]-policy[app]-rule[0]":
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: { rules: [{ header: { name: ":method", string_match: { exact: GET } } }] }
                        - or_rules: { rules: [{ url_path: { path: { prefix: /public/ } } }] }
                    principals:
                    - and_ids: { ids: [{ or_ids: { ids: [{ remote_ip: { address_prefix: 127.0.0.0, prefix_len: 8 } }] } }] }
                  tenant:
                    permissions: [{ url_path: { path: { prefix: /api/ } } }]
                    principals: [{ any: true }]
                    # request.headers["x-tenant"] == "acme"
                    condition:
                      call_expr:
                        function: _==_
                        args:
                        - call_expr:
                            function: _[_]
                            args:
                            - select_expr: { operand: { ident_expr: { name: request } }, field: headers }
                            - const_expr: { string_value: x-tenant }
                        - const_expr: { string_value: acme }
              shadow_rules:
                action: DENY
                policies:
                  no-curl:
                    permissions: [{ any: true }]
                    principals: [{ header: { name: user-agent, string_match: { prefix: curl/ } } }]
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %[1]q
              log_format: { text_format_source: { inline_string: "%%REQ(:PATH)%% %%RESPONSE_CODE%% %%RESPONSE_CODE_DETAILS%%\n" } }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /open/ }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
              - match: { prefix: /internal/ }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules:
                        action: ALLOW
                        policies:
                          ops:
                            permissions: [{ any: true }]
                            principals: [{ header: { name: x-ops, present_match: true } }]
              - match: { prefix: / }
                route: { cluster: app }
  - name: mtls
    address: { socket_address: { address: 127.0.0.1, port_value: %[7]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_mtls
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  sleep:
                    permissions: [{ any: true }]
                    principals: [{ authenticated: { principal_name: { exact: "spiffe://cluster.local/ns/default/sa/sleep" } } }]
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: / }, route: { cluster: app } }]
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: { filename: %[2]q }
              private_key: { filename: %[3]q }
            validation_context:
              trusted_ca: { filename: %[4]q }
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[5]s } } } }] }]
`

// An Envoy bootstrap with the RBAC filter: Istio-shaped policies allow
// and deny with Envoy's 403, a CEL condition decides, RBACPerRoute
// disables and overrides, shadow rules only report, peer identities are
// matched on mTLS, and Envoy's stats count it all.
func TestRBACBootstrap(t *testing.T) {
	up := newUpstream(t, nil)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "rbac-ca")
	cert, key := ca.Issue(t, "proxy.test").WriteFiles(t, dir, "proxy")
	caFile := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(t, caFile, ca.CertPEM)
	logPath := filepath.Join(dir, "access.log")
	_, port, _ := strings.Cut(up.addr(), ":")

	src := fmt.Sprintf(rbacBootstrap, logPath, cert, key, caFile, port, freePort(t), freePort(t))
	snap, err := xds.LoadBootstrap([]byte(src), "rbac.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("main").String()

	type want struct {
		status         int
		body           string // prefix of the body
		result, policy string // x-rbac-result, x-rbac-policy ("" when the filter is off)
		shadow         string
	}
	tests := []struct {
		name, method, path string
		headers            []string
		want               want
	}{
		{"allowed by method, path and source", "GET", "/public/x", nil, want{200, "GET /public/x", "allowed", "ns[default]-policy[app]-rule[0]", "allowed"}},
		{"method not allowed", "POST", "/public/x", nil, want{403, "RBAC: access denied", "denied", "nil", "allowed"}},
		{"CEL condition true", "GET", "/api/orders", []string{"x-tenant", "acme"}, want{200, "GET /api/orders", "allowed", "tenant", "allowed"}},
		{"CEL condition false", "GET", "/api/orders", []string{"x-tenant", "other"}, want{403, "RBAC: access denied", "denied", "nil", "allowed"}},
		{"CEL error is no match", "GET", "/api/orders", nil, want{403, "RBAC: access denied", "denied", "nil", "allowed"}},
		{"shadow would deny", "GET", "/public/y", []string{"user-agent", "curl/8.5"}, want{200, "GET /public/y", "allowed", "ns[default]-policy[app]-rule[0]", "denied"}},
		{"disabled on the route", "POST", "/open/x", nil, want{200, "POST /open/x", "", "", ""}},
		{"route override denies", "GET", "/internal/x", nil, want{403, "RBAC: access denied", "denied", "nil", "nil"}},
		{"route override allows", "GET", "/internal/x", []string{"x-ops", "1"}, want{200, "GET /internal/x", "allowed", "ops", "nil"}},
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, base+tt.path, nil)
		for i := 0; i+1 < len(tt.headers); i += 2 {
			req.Header.Set(tt.headers[i], tt.headers[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := want{resp.StatusCode, string(body), resp.Header.Get("x-rbac-result"), resp.Header.Get("x-rbac-policy"), resp.Header.Get("x-rbac-shadow")}
		if got.status != tt.want.status || !strings.HasPrefix(got.body, tt.want.body) || got.result != tt.want.result ||
			got.policy != tt.want.policy || got.shadow != tt.want.shadow {
			t.Errorf("%s: got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}

	// Peer identities on the mTLS listener.
	mtls := "https://" + srv.ListenerAddr("mtls").String() + "/x"
	for _, c := range []struct {
		id     string
		status int
	}{{"spiffe://cluster.local/ns/default/sa/sleep", 200}, {"spiffe://cluster.local/ns/default/sa/other", 403}} {
		leaf := ca.Issue(t, c.id)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "proxy.test",
			Certificates: []tls.Certificate{leaf.TLSCertificate(t)}}}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(mtls)
		if err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.StatusCode != c.status {
			t.Errorf("peer %s: status %d, want %d", c.id, resp.StatusCode, c.status)
		}
	}

	// Envoy's stats under each connection manager's prefix; the requests
	// on the route that disables the filter are not counted.
	stats := adminGet(t, srv.AdminAddr(), "/stats")
	for _, line := range []string{
		"http.inbound_app.rbac.allowed: 4",
		"http.inbound_app.rbac.denied: 4",
		"http.inbound_app.rbac.shadow_allowed: 5",
		"http.inbound_app.rbac.shadow_denied: 1",
		"http.inbound_mtls.rbac.allowed: 1",
		"http.inbound_mtls.rbac.denied: 1",
	} {
		if !strings.Contains(stats, line+"\n") {
			t.Errorf("/stats lacks %q:\n%s", line, grepLines(stats, "rbac"))
		}
	}
	prom := adminGet(t, srv.AdminAddr(), "/stats/prometheus")
	if want := `envoy_http_rbac_denied{envoy_http_conn_manager_prefix="inbound_app"} 4`; !strings.Contains(prom, want) {
		t.Errorf("/stats/prometheus lacks %q:\n%s", want, grepLines(prom, "rbac"))
	}

	// The response details name the policy, as Envoy's.
	var log string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if log = string(b); strings.Count(log, "\n") >= len(tests) {
			break
		}
	}
	for _, line := range []string{
		"/public/x 200 -",
		"/public/x 403 rbac_access_denied_matched_policy[none]",
		"/open/x 200 -",
	} {
		if !strings.Contains(log, line+"\n") {
			t.Errorf("access log lacks %q:\n%s", line, log)
		}
	}
}

// A bootstrap whose RBAC config uses what the filter does not implement
// is refused, naming the field.
func TestRBACBootstrapRejected(t *testing.T) {
	for _, c := range []struct{ rbac, want string }{
		{`{ rules: { policies: { p: { permissions: [{ any: true }], principals: [{ filter_state: { key: k, string_match: { exact: v } } }] } } } }`,
			"rbac: rules.policies[p].principals[0].filter_state: field not supported"},
		{`{ rules: { policies: { p: { permissions: [{ any: true }], principals: [{ any: true }], condition: { ident_expr: { name: nope } } } } } }`,
			"rbac: rules.policies[p].condition: expr: nope: 1:1: undeclared reference to 'nope'"},
	} {
		src := fmt.Sprintf(`
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, %s }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config: { virtual_hosts: [{ name: all, domains: ["*"], routes: [{ match: { prefix: / }, direct_response: { status: 200 } }] }] }
`, strings.TrimSuffix(strings.TrimPrefix(c.rbac, "{"), "}"))
		snap, err := xds.LoadBootstrap([]byte(src), "bad.yaml")
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		err = server.Check(snap, builtins(observe.NewStore()))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v\nwant %q", err, c.want)
		}
	}
}

func adminGet(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
