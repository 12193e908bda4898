package server_test

import (
	"context"
	ctls "crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
	"github.com/sluice-proxy/sluice/protocols/http1"
)

// A TLS listener proxies HTTP/1.1 to a plaintext origin end to end, with
// the real HTTP/1 codec (a test-only import: the engine itself never
// imports protocols) and net/http as the client.
func TestTLSProxyEndToEnd(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin saw "+r.Method+" "+r.URL.Path+" proto="+r.Header.Get("X-Forwarded-Proto"))
	}))
	defer origin.Close()

	ca := tlstest.NewCA(t, "ca")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, "proxy.example.com").WriteFiles(t, dir, "proxy")
	reg := stream.NewRegistry()
	reg.RegisterCodec("http1", http1.NewServerCodec(), http1.NewClientCodec())
	// A registered "http2" makes auto detect: plaintext is then sniffed for
	// the HTTP/2 preface before the HTTP/1 codec takes the connection.
	reg.RegisterCodec("http2", noH2{}, nil)

	snap := &config.Snapshot{
		Clusters: []*config.Cluster{{Name: "origin", Type: "STATIC",
			Endpoints: []*config.Endpoint{{Address: strings.TrimPrefix(origin.URL, "http://"), Healthy: true}}}},
		Listeners: []*config.Listener{{Name: "l", Address: "127.0.0.1:0", FilterChains: []*config.FilterChain{{
			Match: config.FilterChainMatch{TransportProtocol: "tls"},
			TLS: &config.DownstreamTLS{Certificates: []config.Certificate{{
				Chain: config.DataSource{Filename: certFile}, Key: config.DataSource{Filename: keyFile}}}},
			HTTP: &config.HTTPConnectionManager{StatPrefix: "tls", RequestHeadersTimeout: 5 * time.Second,
				RouteConfig: &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"},
					Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Action: &config.RouteAction{Cluster: "origin"}}}}}}},
		}, {
			HTTP: &config.HTTPConnectionManager{StatPrefix: "plain", RequestHeadersTimeout: 5 * time.Second,
				RouteConfig: &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"},
					Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Action: &config.RouteAction{Cluster: "origin"}}}}}}},
		}}}},
	}
	srv := server.New(server.Options{Registry: reg, Log: slog.New(slog.DiscardHandler), AdminAddress: "off", DrainTimeout: time.Second})
	if err := srv.Apply(snap); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()

	tr := &http.Transport{TLSClientConfig: &ctls.Config{RootCAs: ca.Pool(), ServerName: "proxy.example.com", NextProtos: []string{"http/1.1"}}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	addr := srv.ListenerAddr("l").String()
	tests := []struct {
		scheme, method, path string
		want                 string
	}{
		{"https", "GET", "/a", "origin saw GET /a proto=https"},
		{"https", "POST", "/b", "origin saw POST /b proto=https"},
		{"https", "GET", "/c", "origin saw GET /c proto=https"}, // on the kept-alive TLS connection
		{"http", "GET", "/d", "origin saw GET /d proto=http"},   // plaintext on the same port
		{"http", "PUT", "/e", "origin saw PUT /e proto=http"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, tt.scheme+"://"+addr+tt.path, strings.NewReader("x"))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(body) != tt.want {
			t.Errorf("%s %s: %d %q %v", tt.method, tt.path, resp.StatusCode, body, err)
		}
		if tt.scheme == "https" && (resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1") {
			t.Errorf("TLS state %+v", resp.TLS)
		}
	}
}

// noH2 stands in for the HTTP/2 codec; no test connection reaches it.
type noH2 struct{}

func (noH2) ServeConn(context.Context, net.Conn, *stream.ConnInfo, stream.Handler, *stream.ServerOptions) error {
	return errors.New("http2: not in this test")
}
