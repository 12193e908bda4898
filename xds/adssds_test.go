package xds

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// A secret from an SDS server of its own (Istio's sds-grpc) that does not
// translate is NACKed at once, then, while the same error repeats, after a
// doubling delay: go-control-plane's state-of-the-world server answers
// each NACK by resending, and without the delay the two looped tens of
// thousands of times a minute (seen with istiod's resources, before
// Sluice took their client SAN matchers).
func TestSDSNackDelayed(t *testing.T) {
	ads := newCache()
	cp := startControlPlane(t, "tcp", "127.0.0.1:0", ads)
	res := fullConfig(t)
	res.secrets = nil
	sdsSrc := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType: corev3.ApiConfigSource_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "sds"}}}},
		}}}
	res.clusters[0].TransportSocket = &corev3.TransportSocket{Name: "tls", ConfigType: &corev3.TransportSocket_TypedConfig{
		TypedConfig: mustAny(t, &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "client-cert", SdsConfig: sdsSrc}},
		}})}}
	res.set(t, ads, "1")

	// The SDS server serves a validation context where a certificate is
	// wanted, and counts the NACKs.
	sds := newCache()
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{resourcev3.SecretType: {
		&tlsv3.Secret{Name: "client-cert", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sds.SetSnapshot(context.Background(), "sluice-test", snap); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var nacks []time.Time
	var detail string
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(gs, serverv3.NewServer(ctx, sds, serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			if d := r.GetErrorDetail(); d != nil {
				mu.Lock()
				nacks = append(nacks, time.Now())
				detail = d.GetMessage()
				mu.Unlock()
			}
			return nil
		},
	}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		cancel()
		<-done
	})

	sdsCluster := `
  - name: sds
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: sds
      endpoints:
      - lb_endpoints:
        - endpoint: { address: ` + tcpAddress(ln.Addr().String()) + ` }
`
	runClient(t, bootstrapFor(t, "DELTA_GRPC", tcpAddress(cp.addr), sdsCluster), newRecorder().apply)
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(nacks)
	}
	waitFor(t, "the SDS NACK", func() bool { return count() > 0 })
	first := time.Now()
	time.Sleep(2500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(detail, `secret "client-cert": a tls_certificate is required`) {
		t.Errorf("NACK detail %q", detail)
	}
	// At once, after 1 s, after 2 s more: at most 3 in the 2.5 s watched
	// (plus one in flight when the watch began).
	if len(nacks) > 4 {
		t.Fatalf("%d NACKs in %v: the repeated NACK was not delayed", len(nacks), time.Since(first))
	}
	if len(nacks) < 2 {
		t.Fatalf("%d NACKs in %v: the delayed NACK never went", len(nacks), time.Since(first))
	}
	for i := 1; i < len(nacks); i++ {
		if d := nacks[i].Sub(nacks[i-1]); d < 900*time.Millisecond {
			t.Errorf("NACK %d came %v after the one before", i, d)
		}
	}
}
