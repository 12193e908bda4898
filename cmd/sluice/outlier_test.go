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

// outlierBootstrap is a cluster as Istio writes a DestinationRule with
// outlierDetection (consecutive5xxErrors: 3, maxEjectionPercent: 100,
// minHealthPercent: 0): a host answering 500 and a host refusing
// connections, beside a good one.
const outlierBootstrap = `
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: %[4]d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          http_filters:
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
    lb_policy: ROUND_ROBIN
    common_lb_config: { healthy_panic_threshold: { value: 0 } }
    outlier_detection:
      consecutive_5xx: 3
      interval: 10s
      base_ejection_time: 60s
      max_ejection_percent: 100
      enforcing_success_rate: 0
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [
        { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[1]s } } } },
        { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[2]s } } } },
        { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %[3]s } } } } ] }]
`

// Outlier detection through the running proxy: the host answering 500s
// and the host refusing connections are each ejected after 3 consecutive
// failures, and every later request goes to the good host.
func TestOutlierDetectionEjects(t *testing.T) {
	good := newUpstream(t, nil)
	bad := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	_, goodPort, _ := strings.Cut(good.addr(), ":")
	_, badPort, _ := strings.Cut(bad.addr(), ":")
	_, deadPort, _ := strings.Cut(deadAddr(t), ":")
	src := fmt.Sprintf(outlierBootstrap, goodPort, badPort, deadPort, freePort(t))
	snap, err := xds.LoadBootstrap([]byte(src), "outlier.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	if od := snap.Clusters[0].Outlier; od == nil || od.Consecutive5xx != 3 || od.MaxEjectionPercent != 100 || od.EnforcingSuccessRate != 0 {
		t.Fatalf("outlier_detection translated as %+v", od)
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("main").String()
	client := &http.Client{Timeout: 10 * time.Second}
	statuses := map[int]int{}
	var last []int
	for i := range 30 {
		resp, err := client.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses[resp.StatusCode]++
		if i >= 20 {
			last = append(last, resp.StatusCode)
		}
	}
	if statuses[500] != 3 || statuses[503] != 3 || bad.hits.Load() != 3 {
		t.Fatalf("statuses %v, bad host hit %d times: want 3 × 500 and 3 × 503 (connect failures) before both are ejected", statuses, bad.hits.Load())
	}
	for _, st := range last {
		if st != 200 {
			t.Fatalf("after the ejections: statuses %v", last)
		}
	}
	stats := map[string]float64{}
	for _, m := range srv.Stats().Metrics() {
		stats[m.Name] = m.Value
	}
	if stats["cluster.app.outlier_detection.ejections_active"] != 2 || stats["cluster.app.outlier_detection.ejections_enforced_consecutive_5xx"] != 2 {
		t.Fatalf("outlier stats: active %v, enforced consecutive 5xx %v; want 2 and 2",
			stats["cluster.app.outlier_detection.ejections_active"], stats["cluster.app.outlier_detection.ejections_enforced_consecutive_5xx"])
	}
}
