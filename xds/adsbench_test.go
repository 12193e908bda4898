package xds

import (
	"fmt"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// meshResources is a mesh of n services shaped as Istio sends them to a
// sidecar: an EDS cluster and a load assignment of three endpoints per
// service, and one outbound route table ("80") with a virtual host per
// service, behind one listener.
func meshResources(b testing.TB, n int) []proto.Message {
	msgs := []proto.Message{dynListener(b, 10002, "80")}
	rc := &routev3.RouteConfiguration{Name: "80"}
	for i := range n {
		name := fmt.Sprintf("outbound|80||svc-%d.default.svc.cluster.local", i)
		msgs = append(msgs, &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSrc(), ServiceName: name},
			ConnectTimeout:       durationpb.New(10 * time.Second),
		})
		la := loadAssignment(fmt.Sprintf("10.%d.%d.1:8080", i/250, i%250), fmt.Sprintf("10.%d.%d.2:8080", i/250, i%250),
			fmt.Sprintf("10.%d.%d.3:8080", i/250, i%250))
		la.ClusterName = name
		msgs = append(msgs, la)
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:    fmt.Sprintf("svc-%d.default.svc.cluster.local:80", i),
			Domains: []string{fmt.Sprintf("svc-%d.default.svc.cluster.local", i), fmt.Sprintf("svc-%d", i)},
			Routes: []*routev3.Route{{
				Name:  "default",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
					Timeout:          durationpb.New(0),
					RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
						NumRetries: wrapperspb.UInt32(2)},
				}},
			}},
		})
	}
	msgs = append(msgs, rc, headerMutation(b, "1"))
	return msgs
}

// BenchmarkAssembleMesh is the client's work per accepted response (an
// EDS update in a mesh re-translates everything; see docs/rationale.md):
// per op, one snapshot of n services assembled from the store.
func BenchmarkAssembleMesh(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			st := testStore(b, meshResources(b, n)...)
			as := &assembler{dynamicClusters: true}
			a, err := as.assemble(viewAt(st, 0), nil)
			if err != nil {
				b.Fatal(err)
			}
			if len(a.snap.Clusters) != n || len(a.snap.Listeners) != 1 {
				b.Fatalf("%d clusters, %d listeners", len(a.snap.Clusters), len(a.snap.Listeners))
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := as.assemble(viewAt(st, 0), a); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
