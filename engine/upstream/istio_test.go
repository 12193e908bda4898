package upstream

import (
	ctls "crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// An endpoint "unix:PATH" is dialled over a unix socket; a malformed one
// is refused at build time.
func TestUnixEndpoint(t *testing.T) {
	dir, err := os.MkdirTemp("", "slu")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	c, _ := poolCluster(t, func(c *config.Cluster) { c.Type = "STATIC"; c.SourceAddress = "127.0.0.1" }, "unix:"+path)
	h := c.Hosts()[0]
	if h.Address() != "unix:"+path {
		t.Fatalf("address %q", h.Address())
	}
	conn := mustAcquire(t, h)
	sc := <-accepted
	defer sc.Close()
	if sc.LocalAddr().Network() != "unix" {
		t.Fatalf("dialled %s", sc.LocalAddr().Network())
	}
	conn.Release(false)

	m, _ := newTestManager(t)
	for _, addr := range []string{"unix:", "unix:@"} {
		if _, err := m.Build([]*config.Cluster{{Name: "bad", Endpoints: []*config.Endpoint{ep(addr, 1)}}}); err == nil || !strings.Contains(err.Error(), "empty unix socket path") {
			t.Errorf("%q: %v", addr, err)
		}
	}
}

// SourceAddress binds upstream connections to a local IP (Istio's
// upstream_bind_config, 127.0.0.6 for inbound traffic).
func TestSourceAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	remote := make(chan string, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			remote <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	c, _ := poolCluster(t, func(c *config.Cluster) { c.SourceAddress = "127.0.0.6" }, ln.Addr().String())
	conn := mustAcquire(t, c.Hosts()[0])
	defer conn.Release(false)
	if got := <-remote; got != "127.0.0.6" {
		t.Fatalf("connected from %s, want 127.0.0.6", got)
	}
	m, _ := newTestManager(t)
	if _, err := m.Build([]*config.Cluster{{Name: "bad", SourceAddress: "host"}}); err == nil {
		t.Error("a source address that is not an IP was accepted")
	}
}

// Each endpoint connects with the TLS of the transport socket match it
// names (or plaintext), and the HTTP pools offer HTTP1ALPN/HTTP2ALPN
// instead of the configured ALPN, while raw connections keep it.
func TestTransportSocketMatches(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	leaf := ca.Issue(t, "server")
	cert := leaf.TLSCertificate(t)
	alpn := make(chan string, 4)
	tlsLn, err := ctls.Listen("tcp", "127.0.0.1:0", &ctls.Config{Certificates: []ctls.Certificate{cert},
		NextProtos: []string{"istio-http/1.1", "istio-peer-exchange", "istio"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tlsLn.Close()
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			tc := c.(*ctls.Conn)
			if tc.Handshake() == nil {
				alpn <- tc.ConnectionState().NegotiatedProtocol
			}
			c.Close()
		}
	}()
	plain := newTestServer(t)
	mtls := &config.UpstreamTLS{CA: config.DataSource{Inline: ca.CertPEM}, SNI: "server",
		ALPN: []string{"istio-peer-exchange", "istio"}, HTTP1ALPN: []string{"istio-http/1.1", "istio", "http/1.1"}}
	c, _ := poolCluster(t, func(c *config.Cluster) {
		c.Endpoints[0].TransportSocket = "tlsMode-istio"
		c.Endpoints[1].TransportSocket = "tlsMode-disabled"
		c.TransportSocketMatches = []*config.TransportSocketMatch{{Name: "tlsMode-istio", TLS: mtls}, {Name: "tlsMode-disabled"}}
	}, tlsLn.Addr().String(), plain.addr())
	tlsHost, plainHost := c.Hosts()[0], c.Hosts()[1]

	conn := mustAcquire(t, tlsHost)
	conn.Release(false)
	if got := <-alpn; got != "istio-http/1.1" {
		t.Fatalf("HTTP/1 pool negotiated %q, want istio-http/1.1", got)
	}
	raw, err := tlsHost.DialTCP(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if got := <-alpn; got != "istio-peer-exchange" {
		t.Fatalf("raw connection negotiated %q, want istio-peer-exchange", got)
	}
	pc := mustAcquire(t, plainHost)
	pc.Release(false)
	eventually(t, "a plaintext connection", func() bool { return plain.accepted.Load() == 1 })

	m, _ := newTestManager(t)
	_, err = m.Build([]*config.Cluster{{Name: "bad", Endpoints: []*config.Endpoint{{Address: plain.addr(), TransportSocket: "nope"}}}})
	if err == nil || !strings.Contains(err.Error(), `unknown transport socket match "nope"`) {
		t.Errorf("unknown match: %v", err)
	}
}
