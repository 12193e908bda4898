package xds

import (
	"errors"
	"strings"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/sluice-proxy/sluice/engine/config"
)

// tcpBootstrap is a bootstrap with one listener whose chain has the given
// filters (YAML list items, indented for the filters: key) and two
// clusters, a and b.
func tcpBootstrap(filters string) string {
	return `
static_resources:
  listeners:
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 5432 } }
    filter_chains:
    - filters:
` + filters + `
  clusters:
  - name: a
    load_assignment:
      cluster_name: a
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9000 } } } }] }]
  - name: b
    load_assignment:
      cluster_name: b
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9001 } } } }] }]
`
}

func tcpFilter(body string) string {
	return `      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
` + body
}

const rbacFilter = `      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: authz
`

func TestTranslateTCPProxy(t *testing.T) {
	tests := []struct {
		name    string
		filters string
		want    config.TCPProxy
	}{
		{"defaults", tcpFilter("          stat_prefix: pg\n          cluster: a\n"),
			config.TCPProxy{StatPrefix: "pg", Cluster: "a", IdleTimeout: time.Hour, MaxConnectAttempts: 1}},
		{"idle disabled, attempts, duration", tcpFilter(`          stat_prefix: pg
          cluster: a
          idle_timeout: 0s
          max_connect_attempts: 3
          max_downstream_connection_duration: 30s
          backoff_options: { base_interval: 0.1s }
`), config.TCPProxy{StatPrefix: "pg", Cluster: "a", MaxConnectAttempts: 3, MaxConnectionDuration: 30 * time.Second}},
		{"weighted, hash, access log", tcpFilter(`          stat_prefix: split
          weighted_clusters: { clusters: [{ name: a, weight: 3 }, { name: b, weight: 1 }] }
          idle_timeout: 5s
          hash_policy: [{ source_ip: {} }]
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
`), config.TCPProxy{StatPrefix: "split", IdleTimeout: 5 * time.Second, MaxConnectAttempts: 1,
			WeightedClusters: []*config.TCPWeightedCluster{{Name: "a", Weight: 3}, {Name: "b", Weight: 1}},
			HashPolicy:       []config.HashPolicy{{SourceIP: true}},
			AccessLogs:       []*config.AccessLog{{Path: "/dev/stdout"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := LoadBootstrap([]byte(tcpBootstrap(tt.filters)), "tcp.yaml")
			if err != nil {
				t.Fatal(err)
			}
			fc := s.Listeners[0].FilterChains[0]
			if fc.HTTP != nil || len(fc.NetworkFilters) != 0 || fc.TCP == nil {
				t.Fatalf("chain = %+v", fc)
			}
			eq(t, "tcp proxy", *fc.TCP, tt.want)
		})
	}
}

// Network filters before tcp_proxy keep their unpacked message and type
// URL for the engine's registry.
func TestTranslateNetworkFiltersPassThrough(t *testing.T) {
	s, err := LoadBootstrap([]byte(tcpBootstrap(rbacFilter+tcpFilter("          stat_prefix: pg\n          cluster: a\n"))), "tcp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fc := s.Listeners[0].FilterChains[0]
	if len(fc.NetworkFilters) != 1 || fc.TCP == nil {
		t.Fatalf("chain = %+v", fc)
	}
	nf := fc.NetworkFilters[0]
	eq(t, "name", nf.Name, "envoy.filters.network.rbac")
	eq(t, "type", nf.TypeURL, "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC")
	if m, ok := nf.Config.(*rbacv3.RBAC); !ok || m.GetStatPrefix() != "authz" {
		t.Errorf("config = %#v", nf.Config)
	}
}

func TestTranslateTCPProxyErrors(t *testing.T) {
	const at = `xds: tcp.yaml: listener "tcp": filter_chains[0].filters[`
	tests := []struct {
		name, filters, want string
		unsupported         bool
	}{
		{"not last", tcpFilter("          stat_prefix: pg\n          cluster: a\n") + rbacFilter,
			at + `0] (envoy.filters.network.tcp_proxy): tcp_proxy is a terminal filter and must be the last network filter`, false},
		{"no terminal", rbacFilter,
			at + `0] (envoy.filters.network.rbac): network filter type "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC" is not a terminal filter`, false},
		{"on demand", tcpFilter("          stat_prefix: pg\n          cluster: a\n          on_demand: {}\n"),
			at + `0] (envoy.filters.network.tcp_proxy): on_demand: not supported yet`, true},
		{"metadata match", tcpFilter("          stat_prefix: pg\n          cluster: a\n          metadata_match: {}\n"),
			at + `0] (envoy.filters.network.tcp_proxy): metadata_match: not supported yet`, true},
		{"weighted metadata match", tcpFilter("          stat_prefix: pg\n          weighted_clusters: { clusters: [{ name: a, weight: 1, metadata_match: {} }] }\n"),
			at + `0] (envoy.filters.network.tcp_proxy): weighted_clusters.clusters[0].metadata_match: not supported yet`, true},
		{"hash filter state", tcpFilter("          stat_prefix: pg\n          cluster: a\n          hash_policy: [{ filter_state: { key: k } }]\n"),
			at + `0] (envoy.filters.network.tcp_proxy): hash_policy[0].filter_state: not supported yet`, true},
		{"unknown cluster", tcpFilter("          stat_prefix: pg\n          cluster: nope\n"),
			at + `0] (envoy.filters.network.tcp_proxy): cluster: unknown cluster "nope"`, false},
		{"unknown weighted cluster", rbacFilter + tcpFilter("          stat_prefix: pg\n          weighted_clusters: { clusters: [{ name: a, weight: 1 }, { name: c, weight: 1 }] }\n"),
			at + `1] (envoy.filters.network.tcp_proxy): weighted_clusters.clusters[1]: unknown cluster "c"`, false},
		{"bad idle timeout", tcpFilter("          stat_prefix: pg\n          cluster: a\n          idle_timeout: -1s\n"),
			`idle_timeout`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadBootstrap([]byte(tcpBootstrap(tt.filters)), "tcp.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error\n  %s\ndoes not contain\n  %s", err, tt.want)
			}
			if got := errors.Is(err, ErrUnsupported); got != tt.unsupported {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v, want %v", got, tt.unsupported)
			}
		})
	}
}

// checkTCPInvariants is the fuzz target's check of a TCP proxy chain.
func checkTCPInvariants(t *testing.T, listener string, fc *config.FilterChain, clusters map[string]bool, allClustersKnown bool) {
	t.Helper()
	p := fc.TCP
	if fc.HTTP != nil {
		t.Fatalf("listener %q: chain with both HCM and TCP proxy", listener)
	}
	if (p.Cluster == "") == (len(p.WeightedClusters) == 0) {
		t.Fatalf("listener %q: tcp proxy cluster %q and %d weighted clusters", listener, p.Cluster, len(p.WeightedClusters))
	}
	if p.IdleTimeout < 0 || p.MaxConnectionDuration < 0 || p.MaxConnectAttempts < 1 {
		t.Fatalf("listener %q: tcp proxy %+v", listener, p)
	}
	for _, nf := range fc.NetworkFilters {
		if nf.TypeURL == "" || nf.Config == nil {
			t.Fatalf("listener %q: network filter %+v", listener, nf)
		}
	}
	if !allClustersKnown {
		return
	}
	if p.Cluster != "" && !clusters[p.Cluster] {
		t.Fatalf("listener %q: tcp proxy names unknown cluster %q", listener, p.Cluster)
	}
	for _, wc := range p.WeightedClusters {
		if !clusters[wc.Name] {
			t.Fatalf("listener %q: tcp proxy names unknown cluster %q", listener, wc.Name)
		}
	}
}

// Istio's virtualOutbound shape: original_dst and use_original_dst on the
// capturing listener, bind_to_port false on the per-port listeners, an
// ORIGINAL_DST passthrough cluster.
func TestTranslateVirtualOutbound(t *testing.T) {
	const doc = `
static_resources:
  listeners:
  - name: virtualOutbound
    address: { socket_address: { address: 0.0.0.0, port_value: 15001 } }
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }
    traffic_direction: OUTBOUND
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: 0.0.0.0_5432
    address: { socket_address: { address: 0.0.0.0, port_value: 5432 } }
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound|5432||db
          cluster: PassthroughCluster
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
`
	s, err := LoadBootstrap([]byte(doc), "istio.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v, p := s.Listeners[0], s.Listeners[1]
	if !v.OriginalDst || !v.UseOriginalDst || v.NoBind {
		t.Errorf("virtualOutbound: original_dst %v, use_original_dst %v, no bind %v", v.OriginalDst, v.UseOriginalDst, v.NoBind)
	}
	if p.OriginalDst || p.UseOriginalDst || !p.NoBind {
		t.Errorf("0.0.0.0_5432: original_dst %v, use_original_dst %v, no bind %v", p.OriginalDst, p.UseOriginalDst, p.NoBind)
	}
	if c := s.Clusters[0]; c.Type != config.ClusterOriginalDst || len(c.Endpoints) != 0 {
		t.Errorf("cluster %+v", c)
	}
}
