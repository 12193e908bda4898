package xds

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzTranslateResources feeds arbitrary bytes to the xDS client as a
// serialized Listener from a control plane, next to a route table, a
// cluster with its endpoints, secrets and an ECDS filter config. Decoding
// and assembly must never panic; an error must carry the package prefix;
// a snapshot must hold its invariants, with every RDS table and every
// cluster a route names present (the engine rejects a snapshot without
// them).
func FuzzTranslateResources(f *testing.F) {
	tlsListener := dynListener(f, 10004, "r")
	tlsListener.FilterChains[0].TransportSocket = mustTransportSocket(f, &tlsv3.DownstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "server-cert", SdsConfig: adsSrc()}},
		}})
	for _, l := range []*listenerv3.Listener{dynListener(f, 10002, "r"), dynListener(f, 10003, "missing"), tlsListener,
		ecdsListener(f, ecdsSourceWithDefault(f)), corsListener(f)} {
		b, err := proto.Marshal(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	serverCert := clientCert("server-chain")
	serverCert.Name = "server-cert"
	others := []proto.Message{route("r", "/", "c"), edsCluster(f, time.Second), loadAssignment("10.0.0.1:80"),
		clientCert("chain"), serverCert, headerMutation(f, "1")}
	as := &assembler{clusters: []*clusterv3.Cluster{staticCluster()}, dynamicClusters: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeResource(tListener, &anypb.Any{TypeUrl: typeInfo[tListener].url, Value: data}, "1")
		if err != nil {
			return
		}
		st := testStore(t, others...)
		st.res[tListener] = map[string]*entry{e.name: e}
		st.received[tListener] = true
		for _, elapsed := range []time.Duration{0, time.Hour} {
			a, err := as.assemble(viewAt(st, elapsed), nil)
			if err != nil {
				if !strings.HasPrefix(prefixed(err).Error(), "xds: ") || a != nil {
					t.Fatalf("%v %v", a, err)
				}
				return
			}
			// Clusters come from CDS: a route may name one not yet sent
			// (Envoy's 503 at request time), so unknown names are allowed.
			checkInvariants(t, a.snap, !as.dynamicClusters)
			tables := map[string]bool{}
			for _, rc := range a.snap.RouteConfigs {
				tables[rc.Name] = true
				checkRouteInvariants(t, rc, nil, false)
			}
			for _, l := range a.snap.Listeners {
				for _, fc := range append(l.FilterChains, l.DefaultFilterChain) {
					if fc != nil && fc.HTTP != nil && fc.HTTP.RDSName != "" && !tables[fc.HTTP.RDSName] {
						t.Fatalf("listener %q: no table %q", l.Name, fc.HTTP.RDSName)
					}
				}
			}
		}
	})
}

func mustTransportSocket(t testing.TB, m proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(t, m)}}
}

func ecdsSourceWithDefault(t testing.TB) *corev3.ExtensionConfigSource {
	return &corev3.ExtensionConfigSource{ConfigSource: adsSrc(), TypeUrls: []string{typePrefix + nameHeaderMutation},
		DefaultConfig: headerMutation(t, "default").GetTypedConfig()}
}
