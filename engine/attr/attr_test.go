package attr

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/header"
)

// fakeSource is a Source with fixed answers.
type fakeSource struct {
	req, resp, trail  header.Map
	code              int
	id                string
	start             time.Time
	proto             string
	remote, local     netip.AddrPort
	tls               *tls.ConnectionState
	upstream          string
	route, cluster    string
	reqSize, respSize int64
}

func (f *fakeSource) RequestHeaders() *header.Map      { return &f.req }
func (f *fakeSource) ResponseHeaders() *header.Map     { return &f.resp }
func (f *fakeSource) ResponseTrailers() *header.Map    { return &f.trail }
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

var start = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)

func newSource(path string) *fakeSource {
	s := &fakeSource{
		code: 201, id: "req-1", start: start, proto: "HTTP/1.1",
		remote:   netip.MustParseAddrPort("10.1.2.3:5555"),
		local:    netip.MustParseAddrPort("[2001:db8::1]:8443"),
		upstream: "192.0.2.7:80", route: "r1", cluster: "c1",
		reqSize: 12, respSize: 34,
	}
	s.req.Add(":method", "POST")
	s.req.Add(":path", path)
	s.req.Add(":authority", "example.com:8080")
	s.req.Add(":scheme", "https")
	s.req.Add("Referer", "https://ref/")
	s.req.Add("User-Agent", "ua/1")
	s.resp.Add(":status", "201")
	s.trail.Add("grpc-status", "0")
	return s
}

func TestParse(t *testing.T) {
	seen := map[string]bool{}
	for id := Invalid + 1; id < numIDs; id++ {
		name := Names[id]
		if name == "" {
			t.Errorf("ID %d has no name", id)
			continue
		}
		if seen[name] {
			t.Errorf("name %q used twice", name)
		}
		seen[name] = true
		got, err := Parse(name)
		if err != nil || got != id {
			t.Errorf("Parse(%q) = %d, %v; want %d", name, got, err, id)
		}
	}
	if Names[Invalid] != "" {
		t.Errorf("Invalid has a name %q", Names[Invalid])
	}
	for _, bad := range []string{"", "request.nope", "REQUEST.PATH", "request.path ", "request", "request.headers.x"} {
		id, err := Parse(bad)
		if err == nil || id != Invalid {
			t.Errorf("Parse(%q) = %d, %v; want Invalid and an error", bad, id, err)
			continue
		}
		if !strings.Contains(err.Error(), "unknown attribute") || !strings.Contains(err.Error(), "\""+bad+"\"") {
			t.Errorf("Parse(%q) error %q does not name the attribute", bad, err)
		}
	}
}

func TestResolve(t *testing.T) {
	peer := &x509.Certificate{}
	tests := []struct {
		name string
		id   ID
		path string // request path; default "/a/b?x=1&y=2"
		mod  func(*fakeSource)
		want Value
	}{
		{name: "path with query", id: RequestPath, want: str("/a/b?x=1&y=2")},
		{name: "path without query", id: RequestPath, path: "/a/b", want: str("/a/b")},
		{name: "url_path strips query", id: RequestURLPath, want: str("/a/b")},
		{name: "url_path without query", id: RequestURLPath, path: "/a/b", want: str("/a/b")},
		{name: "url_path empty query", id: RequestURLPath, path: "/a?", want: str("/a")},
		{name: "query", id: RequestQuery, want: str("x=1&y=2")},
		{name: "query absent", id: RequestQuery, path: "/a/b", want: str("")},
		{name: "query empty", id: RequestQuery, path: "/a?", want: str("")},
		{name: "query keeps second question mark", id: RequestQuery, path: "/a?b?c", want: str("b?c")},
		{name: "host", id: RequestHost, want: str("example.com:8080")},
		{name: "method", id: RequestMethod, want: str("POST")},
		{name: "scheme", id: RequestScheme, want: str("https")},
		{name: "referer", id: RequestReferer, want: str("https://ref/")},
		{name: "useragent", id: RequestUserAgent, want: str("ua/1")},
		{name: "useragent absent", id: RequestUserAgent, mod: func(s *fakeSource) { s.req.Del("user-agent") }, want: str("")},
		{name: "time", id: RequestTime, want: Value{Kind: KindTime, Time: start}},
		{name: "id", id: RequestID, want: str("req-1")},
		{name: "protocol", id: RequestProtocol, want: str("HTTP/1.1")},
		{name: "request size", id: RequestSize, want: Value{Kind: KindInt, Int: 12}},
		{name: "response code", id: ResponseCode, want: Value{Kind: KindInt, Int: 201}},
		{name: "response code unknown", id: ResponseCode, mod: func(s *fakeSource) { s.code = 0 }, want: Value{Kind: KindInt}},
		{name: "response size", id: ResponseSize, want: Value{Kind: KindInt, Int: 34}},
		{name: "source address v4", id: SourceAddress, want: str("10.1.2.3")},
		{name: "source port", id: SourcePort, want: Value{Kind: KindInt, Int: 5555}},
		{
			name: "source address v4-mapped unmapped", id: SourceAddress,
			mod:  func(s *fakeSource) { s.remote = netip.MustParseAddrPort("[::ffff:10.9.8.7]:1") },
			want: str("10.9.8.7"),
		},
		{
			name: "source address invalid", id: SourceAddress,
			mod:  func(s *fakeSource) { s.remote = netip.AddrPort{} },
			want: str(""),
		},
		{
			name: "source port invalid", id: SourcePort,
			mod:  func(s *fakeSource) { s.remote = netip.AddrPort{} },
			want: Value{Kind: KindInt},
		},
		{name: "destination address v6", id: DestinationAddress, want: str("2001:db8::1")},
		{name: "destination port", id: DestinationPort, want: Value{Kind: KindInt, Int: 8443}},
		{
			name: "destination address v4-mapped unmapped", id: DestinationAddress,
			mod:  func(s *fakeSource) { s.local = netip.MustParseAddrPort("[::ffff:127.0.0.1]:80") },
			want: str("127.0.0.1"),
		},
		{
			name: "destination v6 zone kept", id: DestinationAddress,
			mod:  func(s *fakeSource) { s.local = netip.MustParseAddrPort("[fe80::1%eth0]:80") },
			want: str("fe80::1%eth0"),
		},
		{name: "mtls without tls", id: ConnectionMTLS, want: Value{Kind: KindBool}},
		{
			name: "mtls tls without peer cert", id: ConnectionMTLS,
			mod:  func(s *fakeSource) { s.tls = &tls.ConnectionState{Version: tls.VersionTLS13} },
			want: Value{Kind: KindBool},
		},
		{
			name: "mtls with peer cert", id: ConnectionMTLS,
			mod: func(s *fakeSource) {
				s.tls = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer}}
			},
			want: Value{Kind: KindBool, Bool: true},
		},
		{name: "sni without tls", id: ConnectionRequestedServerName, want: str("")},
		{
			name: "sni", id: ConnectionRequestedServerName,
			mod:  func(s *fakeSource) { s.tls = &tls.ConnectionState{ServerName: "api.example.com"} },
			want: str("api.example.com"),
		},
		{name: "tls version without tls", id: ConnectionTLSVersion, want: str("")},
		{
			name: "tls version 1.3", id: ConnectionTLSVersion,
			mod:  func(s *fakeSource) { s.tls = &tls.ConnectionState{Version: tls.VersionTLS13} },
			want: str("TLS 1.3"),
		},
		{
			name: "tls version 1.2", id: ConnectionTLSVersion,
			mod:  func(s *fakeSource) { s.tls = &tls.ConnectionState{Version: tls.VersionTLS12} },
			want: str("TLS 1.2"),
		},
		{name: "upstream address", id: UpstreamAddress, want: str("192.0.2.7:80")},
		{name: "upstream address unknown", id: UpstreamAddress, mod: func(s *fakeSource) { s.upstream = "" }, want: str("")},
		{name: "route name", id: XDSRouteName, want: str("r1")},
		{name: "cluster name", id: XDSClusterName, want: str("c1")},
		{name: "invalid id", id: Invalid, want: Value{}},
		{name: "out of range id", id: numIDs + 5, want: Value{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = "/a/b?x=1&y=2"
			}
			s := newSource(path)
			if tt.mod != nil {
				tt.mod(s)
			}
			got := Resolve(s, tt.id)
			if got.Kind != tt.want.Kind || got.Str != tt.want.Str || got.Int != tt.want.Int ||
				got.Bool != tt.want.Bool || !got.Time.Equal(tt.want.Time) || got.Headers != nil {
				t.Errorf("Resolve(%s) = %+v, want %+v", Names[min(tt.id, numIDs-1)], got, tt.want)
			}
		})
	}
}

func TestResolveHeaders(t *testing.T) {
	s := newSource("/")
	tests := []struct {
		id         ID
		want       *header.Map
		name, val  string
		presentKey string
	}{
		{RequestHeaders, &s.req, "user-agent", "ua/1", ":path"},
		{ResponseHeaders, &s.resp, ":status", "201", ":status"},
		{ResponseTrailers, &s.trail, "GRPC-STATUS", "0", "grpc-status"},
	}
	for _, tt := range tests {
		v := Resolve(s, tt.id)
		if v.Kind != KindHeaders {
			t.Errorf("%s: kind %d, want KindHeaders", Names[tt.id], v.Kind)
		}
		// The live map, not a copy: nothing is built per request.
		if v.Headers != tt.want {
			t.Errorf("%s: Headers is not the source's map", Names[tt.id])
			continue
		}
		if got := v.Headers.Value(tt.name); got != tt.val {
			t.Errorf("%s: %s = %q, want %q", Names[tt.id], tt.name, got, tt.val)
		}
	}
	// A later change to the source's map is visible through the value.
	v := Resolve(s, RequestHeaders)
	s.req.Set("x-late", "1")
	if v.Headers.Value("x-late") != "1" {
		t.Error("resolved headers are a snapshot, not the live map")
	}
}

// Kinds must agree with the Kind of the Value Resolve returns for every ID.
func TestKindsMatchResolve(t *testing.T) {
	s := newSource("/p?q")
	s.tls = &tls.ConnectionState{ServerName: "x", Version: tls.VersionTLS12}
	for id := Invalid + 1; id < numIDs; id++ {
		v := Resolve(s, id)
		if v.Kind != Kinds[id] {
			t.Errorf("%s: Resolve kind %d, Kinds says %d", Names[id], v.Kind, Kinds[id])
		}
		if v.Kind == KindHeaders && v.Headers == nil {
			t.Errorf("%s: headers kind with nil map", Names[id])
		}
	}
}

func TestResolveNoAlloc(t *testing.T) {
	s := newSource("/a/b?x=1")
	s.tls = &tls.ConnectionState{ServerName: "x", Version: tls.VersionTLS13}
	for id := Invalid + 1; id < numIDs; id++ {
		if id == SourceAddress || id == DestinationAddress {
			continue // formatting an address allocates its string
		}
		if n := testing.AllocsPerRun(20, func() { _ = Resolve(s, id) }); n != 0 {
			t.Errorf("%s: %v allocs per Resolve", Names[id], n)
		}
	}
}
