package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/xds"
)

// rulesBootstrap is an Envoy bootstrap whose connection manager runs a
// Sluice rules filter given as source text in a TypedStruct, the form an
// xDS control plane sends it in.
func rulesBootstrap(upstream, source string) string {
	host, port, _ := strings.Cut(upstream, ":")
	return fmt.Sprintf(`static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          http_filters:
          - name: sluice.rules
            typed_config:
              "@type": type.googleapis.com/xds.type.v3.TypedStruct
              type_url: type.googleapis.com/sluice.filters.rules.v1.Rules
              value:
                name: gateway-rules
                source: %q
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: / }, route: { cluster: app } }]
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: %s, port_value: %s } } } }] }]
`, source, host, port)
}

// The Sluice rule language as an HTTP filter of an Envoy config (bootstrap
// or xDS: the same translation): `on` blocks given as source text run on
// the listener's requests; a broken one is refused naming its line.
func TestRulesFilterFromEnvoyConfig(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "x-traced="+r.Header.Get("x-traced"))
	})
	src := "on request when request.headers[\"x-debug\"] == \"1\" {\n  set request.headers[\"x-traced\"] = \"yes\"\n}\n" +
		"on response {\n  set response.headers[\"x-rules\"] = \"from-xds\"\n}\n"
	snap, err := xds.LoadBootstrap([]byte(rulesBootstrap(up.addr(), src)), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, snap)
	req, _ := http.NewRequest("GET", proxyURL(srv)+"/", nil)
	req.Header.Set("x-debug", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "x-traced=yes" || resp.Header.Get("x-rules") != "from-xds" {
		t.Fatalf("got %q x-rules=%q", body, resp.Header.Get("x-rules"))
	}

	bad, err := xds.LoadBootstrap([]byte(rulesBootstrap(up.addr(), "on request {\n  set request.headers[\"x\"] = nope\n}")), "rules.yaml")
	if err != nil {
		t.Fatal(err) // translation passes: the source is compiled by its filter compiler
	}
	if err := srv.Apply(bad); err == nil || !strings.Contains(err.Error(), "gateway-rules:2:") {
		t.Fatalf("broken rules applied or error without its line: %v", err)
	}
}
