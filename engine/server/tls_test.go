package server

import (
	"bufio"
	"context"
	ctls "crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/netio"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// --- fake codecs ---------------------------------------------------------------

// lineCodec stands in for the HTTP/1 and HTTP/2 codecs: it reads one
// request head (the HTTP/2 one reads the connection preface first), serves
// it through the handler — streams times at once, as HTTP/2 does — and
// answers with a head saying which codec, scheme and TLS state served it.
type lineCodec struct {
	name    string
	preface bool
	streams int
}

func (f lineCodec) ServeConn(ctx context.Context, c net.Conn, info *stream.ConnInfo, h stream.Handler, opts *stream.ServerOptions) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if f.preface {
		p := make([]byte, len(netio.HTTP2Preface))
		if _, err := io.ReadFull(br, p); err != nil || string(p) != netio.HTTP2Preface {
			return fmt.Errorf("%s: bad preface %q: %v", f.name, p, err)
		}
	}
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return err
	}
	method, rest, _ := strings.Cut(line, " ")
	path, _, _ := strings.Cut(rest, " ")
	mh, err := tp.ReadMIMEHeader()
	if err != nil {
		return err
	}
	n := max(f.streams, 1)
	streams := make([]*fakeStream, n)
	var wg sync.WaitGroup
	for i := range streams {
		st := &fakeStream{info: info, proto: "HTTP/1.1"}
		if f.name == "http2" {
			st.proto = "HTTP/2"
		}
		st.req.Add(":method", method)
		st.req.Add(":scheme", opts.Scheme)
		st.req.Add(":authority", mh.Get("Host"))
		st.req.Add(":path", path)
		streams[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.ServeStream(st)
		}()
	}
	wg.Wait()
	st := streams[0]
	for _, o := range streams[1:] {
		if o.status != st.status || o.body.String() != st.body.String() {
			st.status = "mismatch"
		}
	}
	sni, alpn := "-", "-"
	if info.TLS != nil {
		sni, alpn = info.TLS.ServerName, info.TLS.NegotiatedProtocol
	}
	fmt.Fprintf(c, "HTTP/1.1 %s X\r\nx-codec: %s\r\nx-scheme: %s\r\nx-sni: %s\r\nx-alpn: %s\r\ncontent-length: %d\r\n\r\n%s",
		st.status, f.name, opts.Scheme, sni, alpn, st.body.Len(), st.body.String())
	return nil
}

type fakeStream struct {
	stream.ServerStream
	info   *stream.ConnInfo
	proto  string
	req    header.Map
	trail  header.Map
	status string
	body   strings.Builder
}

func (s *fakeStream) RequestHeaders() *header.Map          { return &s.req }
func (s *fakeStream) Body() io.Reader                      { return strings.NewReader("") }
func (s *fakeStream) HasBody() bool                        { return false }
func (s *fakeStream) ContentLength() int64                 { return 0 }
func (s *fakeStream) RequestTrailers() *header.Map         { return &s.trail }
func (s *fakeStream) WriteInformational(*header.Map) error { return nil }
func (s *fakeStream) WriteTrailers(*header.Map) error      { return nil }
func (s *fakeStream) Reset()                               {}
func (s *fakeStream) Conn() *stream.ConnInfo               { return s.info }
func (s *fakeStream) Protocol() string                     { return s.proto }
func (s *fakeStream) Hijack() (io.ReadWriteCloser, error)  { return nil, errors.New("no") }
func (s *fakeStream) WriteBody(p []byte, end bool) error   { s.body.Write(p); return nil }
func (s *fakeStream) WriteHeaders(h *header.Map, end bool) error {
	s.status = h.Value(":status")
	return nil
}

func fakeRegistry(http2 bool) *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", lineCodec{name: "http1"}, fakeClientCodec{})
	if http2 {
		r.RegisterCodec("http2", lineCodec{name: "http2", preface: true, streams: 8}, nil)
	}
	return r
}

// --- snapshots -----------------------------------------------------------------

// certs is a CA and the server certificates of the tests, as files.
type certs struct {
	ca                        *tlstest.CA
	dir                       string
	www, apps, api, mtls, bad config.Certificate
	client                    ctls.Certificate
	caFile                    string
}

func newCerts(t *testing.T) *certs {
	t.Helper()
	c := &certs{ca: tlstest.NewCA(t, "test CA"), dir: t.TempDir()}
	file := func(name string, names ...string) config.Certificate {
		cf, kf := c.ca.Issue(t, names...).WriteFiles(t, c.dir, name)
		return config.Certificate{Chain: config.DataSource{Filename: cf}, Key: config.DataSource{Filename: kf}}
	}
	c.www = file("www", "www.example.com")
	c.apps = file("apps", "*.apps.example.com")
	c.api = file("api", "api.example.com")
	c.mtls = file("mtls", "mtls.example.com")
	c.bad = config.Certificate{Chain: config.DataSource{Filename: filepath.Join(c.dir, "missing.pem")}, Key: c.www.Key}
	c.client = c.ca.Issue(t, "client.example.com").TLSCertificate(t)
	c.caFile = filepath.Join(c.dir, "ca.pem")
	tlstest.WriteFile(t, c.caFile, c.ca.CertPEM)
	return c
}

func directChain(body string, timeout time.Duration) *config.HTTPConnectionManager {
	return &config.HTTPConnectionManager{StatPrefix: body, RequestHeadersTimeout: timeout, RouteConfig: &config.RouteConfiguration{
		VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*config.Route{{
			Match: config.RouteMatch{Prefix: "/"}, DirectResponse: &config.DirectResponse{Status: 200, Body: body}}}}}}}
}

// tlsSnap is one listener whose chains are picked by SNI, ALPN and
// transport; "plain" serves plaintext on the same port.
func tlsSnap(c *certs, timeout time.Duration) *config.Snapshot {
	tlsOf := func(cs ...config.Certificate) *config.DownstreamTLS { return &config.DownstreamTLS{Certificates: cs} }
	mtls := tlsOf(c.mtls)
	mtls.ClientCA = config.DataSource{Filename: c.caFile}
	mtls.RequireClientCertificate = true
	return &config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{
		{Name: "api", Match: config.FilterChainMatch{ServerNames: []string{"api.example.com"}}, TLS: tlsOf(c.api), HTTP: directChain("api", timeout)},
		{Name: "mtls", Match: config.FilterChainMatch{ServerNames: []string{"mtls.example.com"}}, TLS: mtls, HTTP: directChain("mtls", timeout)},
		{Name: "h2", Match: config.FilterChainMatch{TransportProtocol: "tls", ApplicationProtocols: []string{"h2"}}, TLS: tlsOf(c.www), HTTP: directChain("h2", timeout)},
		{Name: "tls", Match: config.FilterChainMatch{TransportProtocol: "tls"}, TLS: tlsOf(c.www, c.apps), HTTP: directChain("tls", timeout)},
		{Name: "plain", HTTP: directChain("plain", timeout)},
	}}}}
}

func startServer(t *testing.T, snap *config.Snapshot, reg *stream.Registry) (*Server, string) {
	t.Helper()
	s := New(Options{Registry: reg, Log: slog.New(slog.DiscardHandler), AdminAddress: "off", DrainTimeout: time.Second})
	if err := s.Apply(snap); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s, s.ListenerAddr("l").String()
}

// --- client ----------------------------------------------------------------------

type reply struct {
	status, codec, scheme, sni, alpn, body, cert string
}

// get sends one request (over TLS when tc is set; after the HTTP/2
// preface when preface is set or h2 is negotiated) and reads the fake
// codec's answer.
func get(addr string, tc *ctls.Config, preface bool) (reply, error) {
	var r reply
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return r, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if tc != nil {
		t := ctls.Client(c, tc)
		if err := t.Handshake(); err != nil {
			return r, err
		}
		st := t.ConnectionState()
		r.cert = st.PeerCertificates[0].Subject.CommonName
		preface = preface || st.NegotiatedProtocol == "h2"
		c = t
	}
	req := "GET / HTTP/1.1\r\nHost: test\r\n\r\n"
	if preface {
		req = netio.HTTP2Preface + req
	}
	if _, err := io.WriteString(c, req); err != nil {
		return r, err
	}
	tp := textproto.NewReader(bufio.NewReader(c))
	line, err := tp.ReadLine()
	if err != nil {
		return r, err
	}
	_, rest, _ := strings.Cut(line, " ")
	r.status, _, _ = strings.Cut(rest, " ")
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return r, err
	}
	n, _ := strconv.Atoi(h.Get("Content-Length"))
	body := make([]byte, n)
	if _, err := io.ReadFull(tp.R, body); err != nil {
		return r, err
	}
	r.codec, r.scheme, r.sni, r.alpn, r.body = h.Get("X-Codec"), h.Get("X-Scheme"), h.Get("X-Sni"), h.Get("X-Alpn"), string(body)
	return r, nil
}

// --- tests -----------------------------------------------------------------------

func TestDownstreamTLS(t *testing.T) {
	c := newCerts(t)
	_, addr := startServer(t, tlsSnap(c, 5*time.Second), fakeRegistry(true))
	client := func(sni string, alpn ...string) *ctls.Config {
		return &ctls.Config{ServerName: sni, RootCAs: c.ca.Pool(), NextProtos: alpn}
	}
	withCert := client("mtls.example.com", "http/1.1")
	withCert.Certificates = []ctls.Certificate{c.client}
	tests := []struct {
		name    string
		tls     *ctls.Config
		preface bool
		want    reply
		wantErr string
	}{
		{name: "plaintext http1", want: reply{status: "200", codec: "http1", scheme: "http", sni: "-", alpn: "-", body: "plain"}},
		{name: "plaintext h2 preface", preface: true, want: reply{status: "200", codec: "http2", scheme: "http", sni: "-", alpn: "-", body: "plain"}},
		{name: "tls http/1.1", tls: client("www.example.com", "http/1.1"),
			want: reply{status: "200", codec: "http1", scheme: "https", sni: "www.example.com", alpn: "http/1.1", body: "tls", cert: "www.example.com"}},
		{name: "tls without ALPN", tls: client("www.example.com"),
			want: reply{status: "200", codec: "http1", scheme: "https", sni: "www.example.com", alpn: "", body: "tls", cert: "www.example.com"}},
		{name: "sni picks the wildcard certificate", tls: client("x.apps.example.com", "http/1.1"),
			want: reply{status: "200", codec: "http1", scheme: "https", sni: "x.apps.example.com", alpn: "http/1.1", body: "tls", cert: "*.apps.example.com"}},
		{name: "server_names picks the chain", tls: client("api.example.com", "h2", "http/1.1"),
			want: reply{status: "200", codec: "http2", scheme: "https", sni: "api.example.com", alpn: "h2", body: "api", cert: "api.example.com"}},
		{name: "server_names case-insensitive", tls: client("API.example.com", "http/1.1"),
			want: reply{status: "200", codec: "http1", scheme: "https", sni: "API.example.com", alpn: "http/1.1", body: "api", cert: "api.example.com"}},
		{name: "application_protocols picks the chain", tls: client("www.example.com", "h2", "http/1.1"),
			want: reply{status: "200", codec: "http2", scheme: "https", sni: "www.example.com", alpn: "h2", body: "h2", cert: "www.example.com"}},
		{name: "mtls with a client certificate", tls: withCert,
			want: reply{status: "200", codec: "http1", scheme: "https", sni: "mtls.example.com", alpn: "http/1.1", body: "mtls", cert: "mtls.example.com"}},
		{name: "mtls without a client certificate", tls: client("mtls.example.com", "http/1.1"), wantErr: "certificate required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := get(addr, tt.tls, tt.preface)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// Without an "http2" codec, auto is HTTP/1: h2 is not offered in ALPN.
func TestAutoWithoutHTTP2Codec(t *testing.T) {
	c := newCerts(t)
	_, addr := startServer(t, tlsSnap(c, 5*time.Second), fakeRegistry(false))
	got, err := get(addr, &ctls.Config{ServerName: "www.example.com", RootCAs: c.ca.Pool(), NextProtos: []string{"h2", "http/1.1"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	// The chain matches on what the client offers (h2); the server then
	// negotiates http/1.1.
	if got.codec != "http1" || got.alpn != "http/1.1" || got.body != "h2" {
		t.Errorf("got %+v", got)
	}
	if got, err := get(addr, nil, false); err != nil || got.codec != "http1" || got.body != "plain" {
		t.Errorf("plaintext: %+v, %v", got, err)
	}
}

// A client on the wrong kind of chain is closed: TLS on a plaintext
// chain, plaintext on a TLS chain.
func TestTransportMismatchCloses(t *testing.T) {
	c := newCerts(t)
	snap := &config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{
		{Match: config.FilterChainMatch{ServerNames: []string{"www.example.com"}}, TLS: &config.DownstreamTLS{Certificates: []config.Certificate{c.www}}, HTTP: directChain("tls", 0)},
		{Match: config.FilterChainMatch{TransportProtocol: "tls"}, HTTP: directChain("tls-but-plain", 0)},
	}}}}
	_, addr := startServer(t, snap, fakeRegistry(true))
	if _, err := get(addr, &ctls.Config{ServerName: "www.example.com", RootCAs: c.ca.Pool()}, false); err != nil {
		t.Fatalf("TLS chain: %v", err)
	}
	if _, err := get(addr, &ctls.Config{ServerName: "other.example.com", RootCAs: c.ca.Pool()}, false); err == nil {
		t.Error("a TLS client was served by a chain without TLS")
	}
	// Plaintext: the only chain that takes it (server names need TLS)
	// is none, so the connection closes.
	if _, err := get(addr, nil, false); err == nil {
		t.Error("a plaintext client was served")
	}

	snap = &config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{
		{TLS: &config.DownstreamTLS{Certificates: []config.Certificate{c.www}}, HTTP: directChain("tls", 0)},
	}}}}
	_, addr = startServer(t, snap, fakeRegistry(true))
	if _, err := get(addr, nil, false); err == nil {
		t.Error("a plaintext client was served by a TLS chain")
	}
}

// A client that connects and sends nothing is closed once the request
// headers timeout passes, whether the listener detects TLS or HTTP/2.
func TestSilentClientClosed(t *testing.T) {
	c := newCerts(t)
	plainAuto := &config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0",
		FilterChains: []*config.FilterChain{{HTTP: directChain("plain", 100*time.Millisecond)}}}}}
	tests := []struct {
		name   string
		snap   *config.Snapshot
		prefix string
	}{
		{"tls detection", tlsSnap(c, 100*time.Millisecond), ""},
		{"http2 detection", plainAuto, ""},
		{"stalled preface", plainAuto, "PRI * HTTP/2"},
		{"stalled ClientHello", tlsSnap(c, 100*time.Millisecond), "\x16\x03\x01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := startServer(t, tt.snap, fakeRegistry(true))
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			io.WriteString(conn, tt.prefix)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			if err == nil || errors.Is(err, errors.ErrUnsupported) || isTimeout(err) {
				t.Errorf("read = %v, want the server to close", err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A certificate that cannot be read rejects the snapshot with the file
// named; the running config keeps serving.
func TestApplyBadCertificateKeepsServing(t *testing.T) {
	c := newCerts(t)
	s, addr := startServer(t, tlsSnap(c, 5*time.Second), fakeRegistry(true))
	bad := tlsSnap(c, 5*time.Second)
	bad.Listeners[0].FilterChains[3].TLS.Certificates[1] = c.bad
	err := s.Apply(bad)
	if err == nil {
		t.Fatal("snapshot with a missing certificate applied")
	}
	for _, w := range []string{`listener "l"`, "filter chain 3", `tls: certificate "` + c.bad.Chain.Filename + `"`, "no such file"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	if err := Check(bad, fakeRegistry(true)); err == nil {
		t.Error("Check accepted the snapshot")
	}
	got, err := get(addr, &ctls.Config{ServerName: "www.example.com", RootCAs: c.ca.Pool()}, false)
	if err != nil || got.body != "tls" {
		t.Errorf("after the rejected snapshot: %+v, %v", got, err)
	}
}

// HTTP/2 serves streams from many goroutines at once; connHandler must
// resolve the chain safely while snapshots are swapped.
func TestConnHandlerConcurrentStreams(t *testing.T) {
	c := newCerts(t)
	s, addr := startServer(t, tlsSnap(c, 5*time.Second), fakeRegistry(true))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20 && ctx.Err() == nil; i++ {
			if err := s.Apply(tlsSnap(c, 5*time.Second)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 20 && ctx.Err() == nil; i++ {
		got, err := get(addr, &ctls.Config{ServerName: "www.example.com", RootCAs: c.ca.Pool(), NextProtos: []string{"h2"}}, false)
		if err != nil || got.status != "200" || got.codec != "http2" || got.body != "h2" {
			t.Fatalf("request %d: %+v, %v", i, got, err)
		}
	}
	wg.Wait()
}

// After a swap, a connection stays with the kind of chain it was accepted
// on: a plaintext connection is not served by a chain that now demands TLS.
func TestResolveKeepsTransport(t *testing.T) {
	c := newCerts(t)
	s := New(Options{Registry: fakeRegistry(true), Log: slog.New(slog.DiscardHandler)})
	plain, err := s.compile(&config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0",
		FilterChains: []*config.FilterChain{{HTTP: directChain("plain", 0)}}}}}, s.env)
	if err != nil {
		t.Fatal(err)
	}
	withTLS, err := s.compile(&config.Snapshot{Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0",
		FilterChains: []*config.FilterChain{{TLS: &config.DownstreamTLS{Certificates: []config.Certificate{c.www}}, HTTP: directChain("tls", 0)}}}}}, s.env)
	if err != nil {
		t.Fatal(err)
	}
	h := &connHandler{s: s, listener: "l", info: &stream.ConnInfo{}, transport: netio.Transport{Protocol: netio.TransportRaw}}
	s.current.Store(plain)
	if h.resolve() == nil {
		t.Fatal("plaintext chain not resolved")
	}
	s.current.Store(withTLS)
	if cm := h.resolve(); cm != nil {
		t.Errorf("plaintext connection resolved to a TLS chain")
	}
}
