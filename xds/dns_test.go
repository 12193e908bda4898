package xds

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluice-proxy/sluice/engine/config"
)

func dnsCluster(t clusterv3.Cluster_DiscoveryType, mod func(*clusterv3.Cluster)) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 "ext",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: t},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "ext", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "api.example.com", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 443}}}},
			}}}},
		}}},
	}
	if mod != nil {
		mod(c)
	}
	return c
}

// The dns_* fields of STRICT_DNS and LOGICAL_DNS clusters reach the
// engine, with Envoy's defaults.
func TestClusterDNSOptions(t *testing.T) {
	tests := []struct {
		name string
		typ  clusterv3.Cluster_DiscoveryType
		mod  func(*clusterv3.Cluster)
		want config.DNSOptions
		err  string
	}{
		{"defaults", clusterv3.Cluster_STRICT_DNS, nil,
			config.DNSOptions{RefreshRate: 5 * time.Second, LookupFamily: config.DNSAuto}, ""},
		{"all set", clusterv3.Cluster_LOGICAL_DNS, func(c *clusterv3.Cluster) {
			c.DnsRefreshRate = durationpb.New(30 * time.Second)
			c.DnsJitter = durationpb.New(time.Second)
			c.DnsFailureRefreshRate = &clusterv3.Cluster_RefreshRate{BaseInterval: durationpb.New(time.Second), MaxInterval: durationpb.New(8 * time.Second)}
			c.RespectDnsTtl = true
			c.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
		}, config.DNSOptions{RefreshRate: 30 * time.Second, Jitter: time.Second, FailureRefreshBase: time.Second,
			FailureRefreshMax: 8 * time.Second, RespectTTL: true, LookupFamily: config.DNSV4Only}, ""},
		{"failure max defaults to ten times the base", clusterv3.Cluster_STRICT_DNS, func(c *clusterv3.Cluster) {
			c.DnsFailureRefreshRate = &clusterv3.Cluster_RefreshRate{BaseInterval: durationpb.New(2 * time.Second)}
			c.DnsLookupFamily = clusterv3.Cluster_ALL
		}, config.DNSOptions{RefreshRate: 5 * time.Second, FailureRefreshBase: 2 * time.Second, FailureRefreshMax: 20 * time.Second,
			LookupFamily: config.DNSAll}, ""},
		{"max below base", clusterv3.Cluster_STRICT_DNS, func(c *clusterv3.Cluster) {
			c.DnsFailureRefreshRate = &clusterv3.Cluster_RefreshRate{BaseInterval: durationpb.New(2 * time.Second), MaxInterval: durationpb.New(time.Second)}
		}, config.DNSOptions{}, "dns_failure_refresh_rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := TranslateCluster(dnsCluster(tt.typ, tt.mod))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one about %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			eq(t, "dns options", out.DNS, tt.want)
			eq(t, "endpoint", out.Endpoints[0].Address, "api.example.com:443")
		})
	}
	// Other cluster types carry no DNS options.
	out, err := TranslateCluster(&clusterv3.Cluster{Name: "s", DnsRefreshRate: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "static cluster dns options", out.DNS, config.DNSOptions{})
}
