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

// faultBootstrap is Istio's shape: the fault filter is empty in the
// connection manager and each route with a VirtualService fault carries
// its config in typed_per_filter_config.
const faultBootstrap = `
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
          - name: envoy.filters.http.fault
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /abort/ }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 503, percentage: { numerator: 100 } }
              - match: { prefix: /delay/ }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: { fixed_delay: 0.05s, percentage: { numerator: 100 } }
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

// An Envoy bootstrap with Istio's fault injection: a per-route abort
// answers Envoy's 503 "fault filter abort" without reaching the upstream,
// a per-route delay holds the request at least its delay, and a route
// without a fault passes through the empty filter.
func TestFaultBootstrap(t *testing.T) {
	up := newUpstream(t, nil)
	_, port, _ := strings.Cut(up.addr(), ":")
	src := fmt.Sprintf(faultBootstrap, port, freePort(t))
	snap, err := xds.LoadBootstrap([]byte(src), "fault.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("main").String()
	client := &http.Client{Timeout: 10 * time.Second}

	get := func(path string) (int, string, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body), time.Since(start)
	}

	if code, body, _ := get("/abort/x"); code != 503 || body != "fault filter abort" {
		t.Errorf("abort route: %d %q, want 503 %q", code, body, "fault filter abort")
	}
	if code, body, took := get("/delay/x"); code != 200 || !strings.HasPrefix(body, "GET /delay/x") || took < 50*time.Millisecond {
		t.Errorf("delay route: %d %q after %v, want 200 after at least 50ms", code, body, took)
	}
	if code, body, _ := get("/plain"); code != 200 || !strings.HasPrefix(body, "GET /plain") {
		t.Errorf("plain route: %d %q", code, body)
	}

	stats := adminGet(t, srv.AdminAddr(), "/stats")
	for _, line := range []string{
		"http.inbound_app.fault.aborts_injected: 1",
		"http.inbound_app.fault.delays_injected: 1",
		"http.inbound_app.fault.active_faults: 0",
	} {
		if !strings.Contains(stats, line+"\n") {
			t.Errorf("/stats lacks %q:\n%s", line, grepLines(stats, "fault"))
		}
	}
}
