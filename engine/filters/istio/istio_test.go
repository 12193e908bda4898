package istio

import (
	ctls "crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeCallbacks is the part of stream.Callbacks the filters use.
type fakeCallbacks struct {
	stream.Callbacks
	state, dyn  stream.Metadata
	cluster     string
	req, resp   header.Map
	trailers    *header.Map
	code        int
	tls         *ctls.ConnectionState
	routeClears int
}

func (f *fakeCallbacks) FilterState() *stream.Metadata                      { return &f.state }
func (f *fakeCallbacks) DynamicMetadata() *stream.Metadata                  { return &f.dyn }
func (f *fakeCallbacks) ClusterName() string                                { return f.cluster }
func (f *fakeCallbacks) RequestHeaders() *header.Map                        { return &f.req }
func (f *fakeCallbacks) ResponseHeaders() *header.Map                       { return &f.resp }
func (f *fakeCallbacks) ResponseTrailers() *header.Map                      { return f.trailers }
func (f *fakeCallbacks) ResponseCode() int                                  { return f.code }
func (f *fakeCallbacks) TLS() *ctls.ConnectionState                         { return f.tls }
func (f *fakeCallbacks) StartTime() time.Time                               { return time.Now().Add(-3 * time.Millisecond) }
func (f *fakeCallbacks) ClearRouteCache()                                   { f.routeClears++ }
func (f *fakeCallbacks) DownstreamLocal() netip.AddrPort                    { return netip.AddrPort{} }
func (f *fakeCallbacks) Logger() *slog.Logger                               { return slog.New(slog.DiscardHandler) }
func (f *fakeCallbacks) FilterOverride() any                                { return nil }
func (f *fakeCallbacks) RouteMetadata(string) map[string]any                { return nil }
func (f *fakeCallbacks) DownstreamRemote() netip.AddrPort                   { return netip.AddrPort{} }
func (f *fakeCallbacks) RequestBodySize() int64                             { return 0 }
func (f *fakeCallbacks) ResponseBodySize() int64                            { return 0 }
func (f *fakeCallbacks) UpstreamAddress() string                            { return "" }
func (f *fakeCallbacks) RouteName() string                                  { return "" }
func (f *fakeCallbacks) Protocol() string                                   { return "HTTP/1.1" }
func (f *fakeCallbacks) RequestID() string                                  { return "" }
func (f *fakeCallbacks) SendLocalReply(int, string, []header.Field, string) {}

func TestNormalizedPath(t *testing.T) {
	for _, c := range []struct {
		in           string
		merge        bool
		want         string
		normalizeOff bool
	}{
		{in: "/a/b/c", want: "/a/b/c"},
		{in: "/a/./b/../c", want: "/a/c"},
		{in: "/../../a", want: "/a"},
		{in: "/a/b/..", want: "/a/"},
		{in: "/a/b/.", want: "/a/b/"},
		{in: "/%2e%2E/admin", want: "/admin"},
		{in: "/a%2fb/%7euser/%41", want: "/a%2Fb/~user/A"},
		{in: `/a\..\b`, want: "/b"},
		{in: "/a//b///c", merge: true, want: "/a/b/c"},
		{in: "/a//b", want: "/a//b"},
		{in: "/a//./b", merge: true, normalizeOff: true, want: "/a/./b"},
		{in: "/bad%zz", want: "/bad%zz"},
	} {
		if got := NormalizedPath(c.in, !c.normalizeOff, c.merge); got != c.want {
			t.Errorf("NormalizedPath(%q, merge %v) = %q, want %q", c.in, c.merge, got, c.want)
		}
	}
	f, err := NormalizePath{}.Compile(&config.NormalizePathConfig{Normalize: true, MergeSlashes: true})
	if err != nil {
		t.Fatal(err)
	}
	cb := &fakeCallbacks{}
	cb.req.Set(":path", "/x/../admin//panel?next=/../a")
	f.NewFilter(cb).OnRequestHeaders(&cb.req, true)
	if p := cb.req.Value(":path"); p != "/admin/panel?next=/../a" || cb.routeClears != 1 {
		t.Fatalf("path %q, route cache cleared %d times", p, cb.routeClears)
	}
}

func testNode() *config.Node {
	return &config.Node{ID: "sidecar~10.0.0.1~productpage-v1-abc.default~default.svc.cluster.local", Metadata: map[string]any{
		"NAME": "productpage-v1-abc", "NAMESPACE": "default", "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "Kubernetes",
		"OWNER":  "kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1",
		"LABELS": map[string]any{"app": "productpage", "version": "v1", "service.istio.io/canonical-name": "productpage", "service.istio.io/canonical-revision": "v1", "other": "x"},
	}}
}

func TestWorkloadRoundTrip(t *testing.T) {
	w := localWorkload(testNode())
	enc, err := w.encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeWorkload(enc)
	if err != nil {
		t.Fatal(err)
	}
	got.ID = w.ID
	if got != w {
		t.Fatalf("round trip: %+v, want %+v", got, w)
	}
	// Unpadded base64, as some peers send.
	if got2, err := decodeWorkload(strings.TrimRight(enc, "=")); err != nil || got2.WorkloadName != "productpage-v1" {
		t.Fatalf("unpadded: %+v %v", got2, err)
	}
	if _, err := decodeWorkload("!!"); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestPeerMetadata(t *testing.T) {
	node := testNode()
	outbound := &config.UndecodedConfig{TypeURL: config.TypeIstioPeerMetadata, Node: node, Fields: map[string]any{
		"upstream_discovery":   []any{map[string]any{"istio_headers": map[string]any{}}, map[string]any{"workload_discovery": map[string]any{}}},
		"upstream_propagation": []any{map[string]any{"istio_headers": map[string]any{"skip_external_clusters": true}}},
	}, ClusterMetadata: map[string]map[string]map[string]any{"ext": {"istio": {"external": true}}}}
	f, err := PeerMetadata{}.Compile(outbound)
	if err != nil {
		t.Fatal(err)
	}
	cb := &fakeCallbacks{cluster: "outbound|9080||reviews.default.svc.cluster.local"}
	flt := f.NewFilter(cb)
	flt.OnRequestHeaders(&cb.req, true)
	if cb.req.Value(headerPeerMetadataID) != node.ID || cb.req.Value(headerPeerMetadata) == "" {
		t.Fatalf("outbound request: %v", cb.req.Fields())
	}
	peer := Workload{WorkloadName: "reviews-v2", Namespace: "default", App: "reviews", Version: "v2"}
	enc, _ := peer.encode()
	cb.resp.Set(headerPeerMetadata, enc)
	cb.resp.Set(headerPeerMetadataID, "sidecar~10.0.0.2~reviews")
	flt.OnResponseHeaders(&cb.resp, true)
	if cb.resp.Has(headerPeerMetadata) || cb.resp.Has(headerPeerMetadataID) {
		t.Fatal("the upstream's headers reached the client")
	}
	v, ok := cb.state.Get("", StateUpstreamPeer)
	if w, _ := v.(Workload); !ok || w.WorkloadName != "reviews-v2" || w.ID != "sidecar~10.0.0.2~reviews" {
		t.Fatalf("upstream peer %+v", v)
	}
	// skip_external_clusters: nothing for a cluster marked external.
	ext := &fakeCallbacks{cluster: "ext"}
	f.NewFilter(ext).OnRequestHeaders(&ext.req, true)
	if ext.req.Has(headerPeerMetadata) {
		t.Fatal("metadata sent to an external cluster")
	}

	// Binary config: downstream discovery (1: istio_headers = 3) and
	// propagation (3: istio_headers = 1).
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), nil))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), nil))
	f, err = PeerMetadata{}.Compile(&config.UndecodedConfig{TypeURL: config.TypeIstioPeerMetadata, Node: node, Value: b})
	if err != nil {
		t.Fatal(err)
	}
	in := &fakeCallbacks{}
	in.req.Set(headerPeerMetadata, enc)
	in.req.Set(headerPeerMetadataID, "sidecar~10.0.0.2~reviews")
	flt = f.NewFilter(in)
	flt.OnRequestHeaders(&in.req, true)
	if in.req.Has(headerPeerMetadata) || in.req.Has(headerPeerMetadataID) {
		t.Fatal("the client's headers reached the app")
	}
	if v, _ := in.state.Get("", StateDownstreamPeer); v.(Workload).App != "reviews" {
		t.Fatalf("downstream peer %+v", v)
	}
	flt.OnResponseHeaders(&in.resp, true)
	if in.resp.Value(headerPeerMetadataID) != node.ID || in.resp.Value(headerPeerMetadata) == "" {
		t.Fatalf("inbound response: %v", in.resp.Fields())
	}
}

func TestStats(t *testing.T) {
	store := observe.NewStore()
	node := testNode()
	// Inbound, binary config: disable_host_header_fallback (6), a metric
	// override removing a tag (8: name 2, tags_to_remove 3).
	var b []byte
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	var mc []byte
	mc = protowire.AppendTag(mc, 2, protowire.BytesType)
	mc = protowire.AppendString(mc, "requests_total")
	mc = protowire.AppendTag(mc, 3, protowire.BytesType)
	mc = protowire.AppendString(mc, "request_protocol")
	b = protowire.AppendTag(b, 8, protowire.BytesType)
	b = protowire.AppendBytes(b, mc)
	f, err := Stats{Store: store}.Compile(&config.UndecodedConfig{TypeURL: config.TypeIstioStats, Node: node, Value: b,
		TrafficDirection: config.TrafficInbound, ClusterMetadata: map[string]map[string]map[string]any{
			"inbound|9080||": {"istio": {"services": []any{map[string]any{"host": "productpage.default.svc.cluster.local", "name": "productpage", "namespace": "default"}}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://cluster.local/ns/default/sa/sleep")
	cb := &fakeCallbacks{cluster: "inbound|9080||", code: 200,
		tls: &ctls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}}
	cb.state.Set("", StateDownstreamPeer, Workload{WorkloadName: "sleep", Namespace: "default", App: "sleep"})
	for i := 0; i < 2; i++ {
		f.NewFilter(cb).OnDone()
	}
	var text strings.Builder
	if err := observe.WritePrometheus(&text, store); err != nil {
		t.Fatal(err)
	}
	want := `istio_requests_total{reporter="destination",source_workload="sleep",source_canonical_service="unknown",source_canonical_revision="unknown",source_workload_namespace="default",source_principal="spiffe://cluster.local/ns/default/sa/sleep",source_app="sleep",source_version="unknown",source_cluster="unknown",destination_workload="productpage-v1",destination_workload_namespace="default",destination_principal="unknown",destination_app="productpage",destination_version="v1",destination_service="productpage.default.svc.cluster.local",destination_canonical_service="productpage",destination_canonical_revision="v1",destination_service_name="productpage",destination_service_namespace="default",destination_cluster="Kubernetes",response_code="200",grpc_response_status="",response_flags="-",connection_security_policy="mutual_tls"} 2`
	if !strings.Contains(text.String(), want) {
		t.Fatalf("prometheus output lacks\n%s\n%s", want, text.String())
	}
	if !strings.Contains(text.String(), `istio_request_duration_milliseconds_count{reporter="destination",`) {
		t.Fatalf("no duration histogram:\n%s", text.String())
	}

	// Outbound gRPC through a TypedStruct config, no peer, host fallback.
	f, err = Stats{Store: store}.Compile(&config.UndecodedConfig{TypeURL: config.TypeIstioStats, Node: node,
		Fields:           map[string]any{"metrics": []any{map[string]any{"name": "request_duration_milliseconds", "drop": true}}},
		TrafficDirection: config.TrafficOutbound})
	if err != nil {
		t.Fatal(err)
	}
	out := &fakeCallbacks{cluster: "PassthroughCluster", code: 200, trailers: &header.Map{}}
	out.req.Set(":authority", "api.example.com:443")
	out.req.Set("content-type", "application/grpc")
	out.trailers.Set("grpc-status", "14")
	f.NewFilter(out).OnDone()
	text.Reset()
	observe.WritePrometheus(&text, store)
	for _, w := range []string{`reporter="source",source_workload="productpage-v1"`, `destination_service="api.example.com",`,
		`destination_service_name="api",destination_service_namespace="unknown"`, `request_protocol="grpc",response_code="200",grpc_response_status="14"`} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("outbound series lacks %s", w)
		}
	}
	if strings.Contains(text.String(), `istio_request_duration_milliseconds_count{reporter="source"`) {
		t.Error("a dropped metric was kept")
	}
	if _, err := (Stats{Store: store}).Compile(&config.UndecodedConfig{TypeURL: config.TypeIstioStats, Fields: map[string]any{"reporter": "NOPE"}}); err == nil {
		t.Error("an unknown reporter was accepted")
	}
}

// fakeNetCallbacks is the part of stream.NetworkCallbacks the metadata
// exchange filter uses.
type fakeNetCallbacks struct {
	stream.NetworkCallbacks
	tls     *ctls.ConnectionState
	written []byte
	dyn     stream.Metadata
}

func (f *fakeNetCallbacks) TLS() *ctls.ConnectionState { return f.tls }
func (f *fakeNetCallbacks) WriteDownstream(p []byte) error {
	f.written = append(f.written, p...)
	return nil
}
func (f *fakeNetCallbacks) DynamicMetadata() *stream.Metadata { return &f.dyn }
func (f *fakeNetCallbacks) Logger() *slog.Logger              { return slog.New(slog.DiscardHandler) }

func TestMetadataExchange(t *testing.T) {
	fac, err := MetadataExchange{}.CompileNetworkFilter(&config.UndecodedConfig{TypeURL: config.TypeIstioMetadataExchange,
		Node: testNode(), Fields: map[string]any{"protocol": "istio-peer-exchange"}})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := mxHello(Workload{WorkloadName: "ratings-v1", Namespace: "default", ID: "sidecar~10.0.0.3~ratings"})
	if err != nil {
		t.Fatal(err)
	}
	cb := &fakeNetCallbacks{tls: &ctls.ConnectionState{NegotiatedProtocol: "istio-peer-exchange"}}
	flt := fac.NewNetworkFilter(cb)
	var buf stream.Buffer
	// The exchange arrives in two pieces, the application's bytes after.
	buf.Set(peer[:5])
	if st := flt.OnDownstreamData(&buf, false); st != stream.NetworkStopIteration {
		t.Fatalf("partial header: %v", st)
	}
	buf.Append(peer[5:])
	buf.Append([]byte("app bytes"))
	if st := flt.OnDownstreamData(&buf, false); st != stream.NetworkContinue || string(buf.Bytes()) != "app bytes" {
		t.Fatalf("after the exchange: %v %q", st, buf.Bytes())
	}
	if len(cb.written) < 8 || binary.BigEndian.Uint32(cb.written) != mxMagic {
		t.Fatalf("no exchange written back: %q", cb.written)
	}
	if v, _ := cb.dyn.Get(mxNamespace, mxStateKey); v.(Workload).WorkloadName != "ratings-v1" || v.(Workload).ID != "sidecar~10.0.0.3~ratings" {
		t.Fatalf("peer %+v", v)
	}
	buf.Set([]byte("more"))
	if st := flt.OnDownstreamData(&buf, false); st != stream.NetworkContinue || string(buf.Bytes()) != "more" {
		t.Fatal("later bytes touched")
	}

	// Another ALPN protocol, or no exchange header: untouched.
	for _, tc := range []struct {
		alpn string
		data string
	}{{"h2", "\x3d\x23\x04\x67rest"}, {"istio-peer-exchange", "GET / HTTP/1.1\r\n"}} {
		cb := &fakeNetCallbacks{tls: &ctls.ConnectionState{NegotiatedProtocol: tc.alpn}}
		flt := fac.NewNetworkFilter(cb)
		buf.Set([]byte(tc.data))
		if st := flt.OnDownstreamData(&buf, false); st != stream.NetworkContinue || string(buf.Bytes()) != tc.data {
			t.Fatalf("%s: %v %q", tc.alpn, st, buf.Bytes())
		}
	}
}

func TestForwardClientCert(t *testing.T) {
	u, _ := url.Parse("spiffe://cluster.local/ns/default/sa/sleep")
	cert := &x509.Certificate{Raw: []byte("der"), URIs: []*url.URL{u}, DNSNames: []string{"a.example", "b.example"}}
	mtls := &ctls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	run := func(mode string, tls *ctls.ConnectionState, in string) (string, bool) {
		f, err := ForwardClientCert{}.Compile(&config.ForwardClientCertConfig{Mode: mode, Subject: true, URI: true, DNS: true})
		if err != nil {
			t.Fatal(err)
		}
		cb := &fakeCallbacks{tls: tls}
		if in != "" {
			cb.req.Set(headerXFCC, in)
		}
		f.NewFilter(cb).OnRequestHeaders(&cb.req, true)
		return cb.req.Get(headerXFCC)
	}
	cur := `Hash=a1ca74f0c2ad7bd53cf6ad7a2bca5bea8fd3a3c3d3f0ed0ef5e34e59b7d6d0f6;Subject="";URI=spiffe://cluster.local/ns/default/sa/sleep;DNS=a.example;DNS=b.example`
	if v, _ := run("APPEND_FORWARD", mtls, "By=x"); !strings.HasPrefix(v, "By=x,Hash=") || !strings.HasSuffix(v, `;URI=spiffe://cluster.local/ns/default/sa/sleep;DNS=a.example;DNS=b.example`) {
		t.Errorf("APPEND_FORWARD: %q (like %q)", v, cur)
	}
	if v, _ := run("SANITIZE_SET", mtls, "By=x"); !strings.HasPrefix(v, "Hash=") {
		t.Errorf("SANITIZE_SET: %q", v)
	}
	if _, ok := run("APPEND_FORWARD", nil, "By=spoofed"); ok {
		t.Error("APPEND_FORWARD kept a plaintext client's header")
	}
	if _, ok := run("SANITIZE", mtls, "By=x"); ok {
		t.Error("SANITIZE kept the header")
	}
	if v, _ := run("ALWAYS_FORWARD_ONLY", nil, "By=x"); v != "By=x" {
		t.Errorf("ALWAYS_FORWARD_ONLY: %q", v)
	}
	if v, _ := run("FORWARD_ONLY", mtls, "By=x"); v != "By=x" {
		t.Errorf("FORWARD_ONLY: %q", v)
	}
	if _, err := (ForwardClientCert{}).Compile(&config.ForwardClientCertConfig{Mode: "NOPE"}); err == nil {
		t.Error("an unknown mode was accepted")
	}
}
