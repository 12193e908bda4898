package rbac

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	httprbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeStream is a stream.Callbacks over fixed connection facts.
type fakeStream struct {
	req      header.Map
	remote   netip.AddrPort
	local    netip.AddrPort
	tls      *tls.ConnectionState
	override any
	md       *stream.Metadata
	routeMD  map[string]map[string]any

	replied bool
	status  int
	body    string
	details string
}

func newStream(kv ...string) *fakeStream {
	s := &fakeStream{
		remote: netip.MustParseAddrPort("10.0.0.1:40000"),
		local:  netip.MustParseAddrPort("10.1.0.1:8080"),
		md:     &stream.Metadata{},
	}
	s.req.Add(":method", "GET")
	s.req.Add(":path", "/")
	s.req.Add(":authority", "example.com")
	s.req.Add(":scheme", "http")
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i][0] == ':' {
			s.req.Set(kv[i], kv[i+1])
		} else {
			s.req.Add(kv[i], kv[i+1])
		}
	}
	return s
}

func (f *fakeStream) RequestHeaders() *header.Map      { return &f.req }
func (f *fakeStream) ResponseHeaders() *header.Map     { return nil }
func (f *fakeStream) ResponseTrailers() *header.Map    { return nil }
func (f *fakeStream) ResponseCode() int                { return 0 }
func (f *fakeStream) RequestID() string                { return "" }
func (f *fakeStream) StartTime() time.Time             { return time.Time{} }
func (f *fakeStream) Protocol() string                 { return "HTTP/1.1" }
func (f *fakeStream) DownstreamRemote() netip.AddrPort { return f.remote }
func (f *fakeStream) DownstreamLocal() netip.AddrPort  { return f.local }
func (f *fakeStream) TLS() *tls.ConnectionState        { return f.tls }
func (f *fakeStream) UpstreamAddress() string          { return "" }
func (f *fakeStream) RouteName() string                { return "" }
func (f *fakeStream) ClusterName() string              { return "" }
func (f *fakeStream) RequestBodySize() int64           { return 0 }
func (f *fakeStream) ResponseBodySize() int64          { return 0 }
func (f *fakeStream) Context() context.Context         { return context.Background() }
func (f *fakeStream) SendLocalReply(status int, body string, _ []header.Field, details string) {
	f.replied, f.status, f.body, f.details = true, status, body, details
}
func (f *fakeStream) Resume()                                {}
func (f *fakeStream) ClearRouteCache()                       {}
func (f *fakeStream) FilterOverride() any                    { return f.override }
func (f *fakeStream) StreamID() uint64                       { return 1 }
func (f *fakeStream) DynamicMetadata() *stream.Metadata      { return f.md }
func (f *fakeStream) FilterState() *stream.Metadata          { return nil }
func (f *fakeStream) RouteMetadata(ns string) map[string]any { return f.routeMD[ns] }
func (f *fakeStream) Logger() *slog.Logger                   { return slog.New(slog.DiscardHandler) }
func (f *fakeStream) HTTPCall(context.Context, string, *header.Map, []byte, time.Duration) (*stream.HTTPResponse, error) {
	panic("rbac makes no calls")
}

var _ stream.Callbacks = (*fakeStream)(nil)

// fromYAML decodes YAML in Envoy's proto3 JSON mapping into m.
func fromYAML(t testing.TB, src string, m proto.Message) {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(src))
	if err != nil {
		t.Fatalf("yaml: %v\n%s", err, src)
	}
	if err := protojson.Unmarshal(j, m); err != nil {
		t.Fatalf("decode %T: %v\n%s", m, err, src)
	}
}

func filterConfig(t testing.TB, src string) *httprbacv3.RBAC {
	t.Helper()
	m := &httprbacv3.RBAC{}
	fromYAML(t, src, m)
	return m
}

func permission(t testing.TB, src string) *rbacv3.Permission {
	t.Helper()
	m := &rbacv3.Permission{}
	fromYAML(t, src, m)
	return m
}

func principal(t testing.TB, src string) *rbacv3.Principal {
	t.Helper()
	m := &rbacv3.Principal{}
	fromYAML(t, src, m)
	return m
}

func eval(m matcher, s *fakeStream) bool {
	var r request
	r.reset(s, &s.req)
	return m.match(&r)
}

func perRoute(t testing.TB, src string) *httprbacv3.RBACPerRoute {
	t.Helper()
	m := &httprbacv3.RBACPerRoute{}
	fromYAML(t, src, m)
	return m
}

func netipAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
