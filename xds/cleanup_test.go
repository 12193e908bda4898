package xds

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// cleanup_interval reaches the ORIGINAL_DST cluster's host cleanup.
func TestClusterCleanupInterval(t *testing.T) {
	c := &clusterv3.Cluster{
		Name:                 "PassthroughCluster",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		CleanupInterval:      durationpb.New(2 * time.Second),
	}
	out, err := TranslateCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	if out.CleanupInterval != 2*time.Second {
		t.Fatalf("cleanup interval %v, want 2s", out.CleanupInterval)
	}
	c.CleanupInterval = nil
	if out, err = TranslateCluster(c); err != nil || out.CleanupInterval != 0 {
		t.Fatalf("no cleanup_interval: %v %v (0 means the engine's 5 s default)", out.CleanupInterval, err)
	}
}
