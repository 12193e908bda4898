package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/xds"
)

// corsBootstrap is Istio's shape: the CORS filter is empty in the
// connection manager and the policies come per virtual host and route
// (typed_per_filter_config). /api has its own policy, which takes
// allow_credentials from the virtual host's.
const corsBootstrap = `
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: %[2]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_app
          http_filters:
          - name: envoy.filters.http.cors
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ suffix: .vh.example }]
                  allow_credentials: true
              routes:
              - match: { prefix: /api/ }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://a.example" }, { safe_regex: { regex: 'https://[a-z]+\.b\.example' } }]
                    allow_methods: GET,PUT
                    allow_headers: content-type,x-token
                    expose_headers: x-upstream
                    max_age: "600"
                    filter_enabled: { default_value: { numerator: 100 }, runtime_key: cors.enabled }
              - match: { prefix: / }
                route: { cluster: app }
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[1]s } } } }] }]
`

// Through the running proxy: an allowed preflight is answered without
// reaching the upstream, one from another origin is forwarded, and the
// responses to allowed origins carry the CORS headers; requests without
// an Origin pass untouched.
func TestCORSBootstrap(t *testing.T) {
	up := newUpstream(t, nil)
	_, port, _ := strings.Cut(up.addr(), ":")
	src := fmt.Sprintf(corsBootstrap, port, freePort(t))
	snap, err := xds.LoadBootstrap([]byte(src), "cors.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("main").String()
	client := &http.Client{Timeout: 10 * time.Second}

	do := func(method, path string, kv ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Set(kv[i], kv[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}
	// cors renders the access-control-* response headers.
	cors := func(resp *http.Response) string {
		var out []string
		for _, name := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Allow-Methods",
			"Access-Control-Allow-Headers", "Access-Control-Max-Age", "Access-Control-Expose-Headers"} {
			if v := resp.Header.Values(name); len(v) > 0 {
				out = append(out, strings.ToLower(name)+"="+strings.Join(v, ","))
			}
		}
		return strings.Join(out, " ")
	}

	hits := up.hits.Load()
	resp, body := do("OPTIONS", "/api/x", "Origin", "https://x.b.example", "Access-Control-Request-Method", "PUT")
	want := "access-control-allow-origin=https://x.b.example access-control-allow-credentials=true access-control-allow-methods=GET,PUT " +
		"access-control-allow-headers=content-type,x-token access-control-max-age=600"
	if resp.StatusCode != 200 || body != "" || cors(resp) != want {
		t.Errorf("allowed preflight: %d %q\n  %s\nwant\n  %s", resp.StatusCode, body, cors(resp), want)
	}
	if n := up.hits.Load(); n != hits {
		t.Errorf("the allowed preflight reached the upstream")
	}

	resp, body = do("OPTIONS", "/api/x", "Origin", "https://evil.example", "Access-Control-Request-Method", "PUT")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "OPTIONS /api/x") || cors(resp) != "" {
		t.Errorf("preflight from another origin: %d %q %s, want it forwarded untouched", resp.StatusCode, body, cors(resp))
	}

	resp, body = do("GET", "/api/x", "Origin", "https://a.example")
	want = "access-control-allow-origin=https://a.example access-control-allow-credentials=true access-control-expose-headers=x-upstream"
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "GET /api/x") || cors(resp) != want {
		t.Errorf("allowed request: %d %q\n  %s\nwant\n  %s", resp.StatusCode, body, cors(resp), want)
	}

	resp, _ = do("GET", "/other", "Origin", "https://www.vh.example")
	if want := "access-control-allow-origin=https://www.vh.example access-control-allow-credentials=true"; cors(resp) != want {
		t.Errorf("virtual host policy: %s, want %s", cors(resp), want)
	}

	resp, body = do("GET", "/api/x")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "GET /api/x") || cors(resp) != "" {
		t.Errorf("request without Origin: %d %q %s", resp.StatusCode, body, cors(resp))
	}

	stats := adminGet(t, srv.AdminAddr(), "/stats")
	for _, line := range []string{"http.inbound_app.cors.origin_valid: 3", "http.inbound_app.cors.origin_invalid: 1"} {
		if !strings.Contains(stats, line+"\n") {
			t.Errorf("/stats lacks %q:\n%s", line, grepLines(stats, "cors"))
		}
	}
}
