package server

import (
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Chains end in exactly one terminal filter; a TCP proxy's clusters must
// exist; network filters run only before a TCP proxy so far, and an
// unregistered one is refused by name.
func TestCheckTCPChains(t *testing.T) {
	tcp := func(cluster string) *config.TCPProxy { return &config.TCPProxy{StatPrefix: "t", Cluster: cluster} }
	reg := testRegistry()
	reg.RegisterNetworkFilter(stream.NetworkCompilerFunc(func(any) (stream.NetworkFactory, error) {
		return stream.NetworkFactoryFunc(func(stream.NetworkCallbacks) stream.NetworkFilter { return stream.NetworkPassThrough{} }), nil
	}), "test.net")
	tests := []struct {
		name  string
		chain *config.FilterChain
		want  string
	}{
		{"tcp proxy", &config.FilterChain{TCP: tcp("a")}, ""},
		{"weighted", &config.FilterChain{TCP: &config.TCPProxy{StatPrefix: "t", WeightedClusters: []*config.TCPWeightedCluster{{Name: "a", Weight: 1}}}}, ""},
		{"network filter", &config.FilterChain{TCP: tcp("a"), NetworkFilters: []*config.NetworkFilter{{Name: "n", TypeURL: "test.net"}}}, ""},
		{"unknown cluster", &config.FilterChain{TCP: tcp("zz")}, `listener "l1": filter chain 0: tcp_proxy "t": unknown cluster "zz"`},
		{"unknown weighted cluster", &config.FilterChain{TCP: &config.TCPProxy{StatPrefix: "t", WeightedClusters: []*config.TCPWeightedCluster{{Name: "zz", Weight: 1}}}}, `unknown cluster "zz"`},
		{"both terminals", &config.FilterChain{TCP: tcp("a"), HTTP: listener("x", "127.0.0.1:1", routeTo("a")).FilterChains[0].HTTP}, "one terminal filter"},
		{"no terminal", &config.FilterChain{}, "no network filter"},
		{"unknown network filter", &config.FilterChain{TCP: tcp("a"), NetworkFilters: []*config.NetworkFilter{{Name: "n", TypeURL: "acme.Nope"}}}, `unknown network filter type "acme.Nope"`},
		{"network filter before hcm", &config.FilterChain{HTTP: listener("x", "127.0.0.1:1", routeTo("a")).FilterChains[0].HTTP,
			NetworkFilters: []*config.NetworkFilter{{Name: "n", TypeURL: "test.net"}}}, `network filter "test.net" before the HTTP connection manager: unsupported operation`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := &config.Snapshot{
				Clusters:  []*config.Cluster{cluster("a")},
				Listeners: []*config.Listener{{Name: "l1", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{tt.chain}}},
			}
			err := Check(snap, reg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
