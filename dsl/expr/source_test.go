package expr

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"time"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
)

// fakeSource is an attr.Source with fixed values.
type fakeSource struct {
	req, resp, trailers *header.Map
	code                int
	id                  string
	start               time.Time
	proto               string
	remote, local       netip.AddrPort
	tls                 *tls.ConnectionState
	upstream            string
	route, cluster      string
	reqSize, respSize   int64
	panicOnHeaders      bool
}

var _ attr.Source = (*fakeSource)(nil)

func (f *fakeSource) RequestHeaders() *header.Map {
	if f.panicOnHeaders {
		panic("boom")
	}
	return f.req
}
func (f *fakeSource) ResponseHeaders() *header.Map     { return f.resp }
func (f *fakeSource) ResponseTrailers() *header.Map    { return f.trailers }
func (f *fakeSource) ResponseCode() int                { return f.code }
func (f *fakeSource) RequestID() string                { return f.id }
func (f *fakeSource) StartTime() time.Time             { return f.start }
func (f *fakeSource) Protocol() string                 { return f.proto }
func (f *fakeSource) DownstreamRemote() netip.AddrPort { return f.remote }
func (f *fakeSource) DownstreamLocal() netip.AddrPort  { return f.local }
func (f *fakeSource) TLS() *tls.ConnectionState        { return f.tls }
func (f *fakeSource) UpstreamAddress() string          { return f.upstream }
func (f *fakeSource) RouteName() string                { return f.route }
func (f *fakeSource) ClusterName() string              { return f.cluster }
func (f *fakeSource) RequestBodySize() int64           { return f.reqSize }
func (f *fakeSource) ResponseBodySize() int64          { return f.respSize }

func headers(kv ...string) *header.Map {
	m := new(header.Map)
	for i := 0; i+1 < len(kv); i += 2 {
		m.Add(kv[i], kv[i+1])
	}
	return m
}

func newFakeSource() *fakeSource {
	return &fakeSource{
		req: headers(
			":method", "GET",
			":path", "/api/v1/users?id=7&x=1",
			":authority", "example.com",
			":scheme", "https",
			"X-Canary", "true",
			"Accept", "text/html",
			"accept", "application/json",
			"User-Agent", "curl/8.5",
			"Referer", "https://ref.example/",
		),
		code:     503,
		id:       "req-42",
		start:    time.Date(2024, 5, 17, 10, 30, 0, 0, time.UTC),
		proto:    "HTTP/2",
		remote:   netip.MustParseAddrPort("[::ffff:10.1.2.3]:54321"),
		local:    netip.MustParseAddrPort("192.0.2.1:8443"),
		tls:      &tls.ConnectionState{Version: tls.VersionTLS13, ServerName: "sni.example", PeerCertificates: []*x509.Certificate{{}}},
		upstream: "10.0.0.9:8080",
		route:    "api",
		cluster:  "backend",
		reqSize:  12,
		respSize: 3456,
		resp:     headers("Content-Type", "text/plain", "Set-Cookie", "a=1", "Set-Cookie", "b=2"),
	}
}
