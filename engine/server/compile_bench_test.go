package server

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// meshSnapshot is what a sidecar of a mesh of n services runs: n clusters
// of three endpoints and one outbound route table with a virtual host per
// service.
func meshSnapshot(n int) *config.Snapshot {
	rc := &config.RouteConfiguration{Name: "80"}
	s := &config.Snapshot{DynamicClusters: true}
	for i := range n {
		name := fmt.Sprintf("outbound|80||svc-%d.default.svc.cluster.local", i)
		c := &config.Cluster{Name: name, Type: "EDS", ConnectTimeout: 10 * time.Second}
		for k := 1; k <= 3; k++ {
			c.Endpoints = append(c.Endpoints, &config.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d:8080", i/250, i%250, k), Weight: 1, Healthy: true})
		}
		s.Clusters = append(s.Clusters, c)
		rc.VirtualHosts = append(rc.VirtualHosts, &config.VirtualHost{
			Name:    fmt.Sprintf("svc-%d.default.svc.cluster.local:80", i),
			Domains: []string{fmt.Sprintf("svc-%d.default.svc.cluster.local", i), fmt.Sprintf("svc-%d", i)},
			Routes: []*config.Route{{Name: "default", Match: config.RouteMatch{Prefix: "/"},
				Action: &config.RouteAction{Cluster: name}}},
		})
	}
	s.RouteConfigs = []*config.RouteConfiguration{rc}
	s.Listeners = []*config.Listener{rdsListener("outbound", "127.0.0.1:15001", "80")}
	return s
}

// BenchmarkCompileMesh is the engine's share of applying an xDS update in
// a mesh of n services when one service's endpoints changed: the graph is
// compiled again, unchanged clusters are reused.
func BenchmarkCompileMesh(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s := New(Options{Registry: testRegistry(), Log: slog.New(slog.DiscardHandler)})
			env := *s.env
			env.AccessLog = nil
			snap := meshSnapshot(n)
			g, err := s.compile(snap, &env)
			if err != nil {
				b.Fatal(err)
			}
			s.upstreams.Commit(g.clusters)
			next := meshSnapshot(n)
			next.Clusters[0].Endpoints[0].Address = "10.9.9.9:8080"
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.compile(next, &env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
