package compile

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// TLS and HTTP/2 statements compile to the model's fields; files resolve
// relative to the file that names them and are watched, so a renewed
// certificate triggers a reload (even when the program does not compile).
func TestTLS(t *testing.T) {
	fs := files(map[string]string{
		"conf/main.sluice": `import "up/api.sluice"
listener l :8443 {
  protocol http2
  tls {
    cert "certs/a.pem" key "certs/a.key"
    cert "/etc/b.pem" key "/etc/b.key"
    alpn " h2 "
    client_ca "certs/ca.pem"
    require_client_cert
    min_version "TLSv1_2"
    max_version "TLSv1_3"
    cipher_suites "ECDHE-ECDSA-AES128-GCM-SHA256,ECDHE-RSA-AES128-GCM-SHA256"
  }
  http2 {
    max_concurrent_streams 64
    keepalive 1m
  }
  route r { proxy api }
}
`,
		"conf/up/api.sluice": `upstream api {
  endpoint api.internal:443
  protocol downstream
  tls {
    sni "api.internal"
    ca "../certs/upstream-ca.pem"
    cert "client.pem" key "client.key"
    alpn "h2,http/1.1"
    san "api.internal"
    san "spiffe://x/api"
  }
  http2 { initial_connection_window 65535 }
}
`,
	})
	res, err := Load("conf/main.sluice", fs, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	fc := res.Snapshot.Listeners[0].FilterChains
	if len(fc) != 1 {
		t.Fatalf("%d filter chains, want one with TLS", len(fc))
	}
	wantDown := &config.DownstreamTLS{
		Certificates: []config.Certificate{
			{Chain: config.DataSource{Filename: "conf/certs/a.pem"}, Key: config.DataSource{Filename: "conf/certs/a.key"}},
			{Chain: config.DataSource{Filename: "/etc/b.pem"}, Key: config.DataSource{Filename: "/etc/b.key"}},
		},
		ALPN: []string{"h2"},
		Params: config.TLSParams{MinVersion: "TLSv1_2", MaxVersion: "TLSv1_3",
			CipherSuites: []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"}},
		ClientCA:                 config.DataSource{Filename: "conf/certs/ca.pem"},
		RequireClientCertificate: true,
	}
	if !reflect.DeepEqual(fc[0].TLS, wantDown) {
		t.Errorf("listener TLS:\n got %s\nwant %s", dump(fc[0].TLS), dump(wantDown))
	}
	hcm := fc[0].HTTP
	if hcm.Codec != config.CodecHTTP2 || hcm.HTTP2 != (config.HTTP2Options{MaxConcurrentStreams: 64, ConnectionKeepaliveInterval: time.Minute}) {
		t.Errorf("codec %s, HTTP/2 %+v", hcm.Codec, hcm.HTTP2)
	}

	c := res.Snapshot.Clusters[0]
	wantUp := &config.UpstreamTLS{
		SNI:             "api.internal",
		CA:              config.DataSource{Filename: "conf/certs/upstream-ca.pem"},
		Certificate:     &config.Certificate{Chain: config.DataSource{Filename: "conf/up/client.pem"}, Key: config.DataSource{Filename: "conf/up/client.key"}},
		ALPN:            []string{"h2", "http/1.1"},
		SubjectAltNames: []string{"api.internal", "spiffe://x/api"},
	}
	if !reflect.DeepEqual(c.TLS, wantUp) {
		t.Errorf("upstream TLS:\n got %s\nwant %s", dump(c.TLS), dump(wantUp))
	}
	if c.Protocol != config.ProtocolDownstream || c.HTTP2 != (config.HTTP2Options{InitialConnectionWindowSize: 65535}) {
		t.Errorf("protocol %s, HTTP/2 %+v", c.Protocol, c.HTTP2)
	}

	wantWatch := []string{"conf/main.sluice", "conf/up/api.sluice", "conf/certs/a.pem", "conf/certs/a.key", "/etc/b.pem", "/etc/b.key",
		"conf/certs/ca.pem", "conf/certs/upstream-ca.pem", "conf/up/client.pem", "conf/up/client.key"}
	if !reflect.DeepEqual(res.Watch, wantWatch) {
		t.Errorf("watch:\n got %v\nwant %v", res.Watch, wantWatch)
	}
	if w := WatchPaths("conf/main.sluice", fs); !reflect.DeepEqual(w, wantWatch) {
		t.Errorf("WatchPaths:\n got %v\nwant %v", w, wantWatch)
	}

	// Defaults: no tls block, no TLS; protocols as written.
	res = compileSrc(t, "upstream a { endpoint 10.0.0.1:80 }\nupstream b {\n  endpoint 10.0.0.1:443\n  protocol auto\n  tls {}\n}\n"+
		"listener l :80 {\n  route s when request.path == \"/b\" { proxy b }\n  route r { proxy a }\n}\n")
	a, b := res.Snapshot.Clusters[0], res.Snapshot.Clusters[1]
	if a.Protocol != config.ProtocolHTTP1 || a.TLS != nil || b.Protocol != config.ProtocolAuto || !reflect.DeepEqual(b.TLS, &config.UpstreamTLS{}) {
		t.Errorf("a %s %v, b %s %v", a.Protocol, a.TLS, b.Protocol, b.TLS)
	}
	if l := res.Snapshot.Listeners[0]; l.FilterChains[0].TLS != nil || l.FilterChains[0].HTTP.Codec != config.CodecAuto {
		t.Errorf("listener without tls: %+v", l.FilterChains[0])
	}
}

// The TLS examples of docs/dsl.md compile.
func TestDocsTLSExamples(t *testing.T) {
	md, err := os.ReadFile("../../docs/dsl.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, block := range strings.Split(string(md), "```")[1:] {
		if i%2 == 1 || !strings.HasPrefix(block, "\n") || !strings.Contains(block, "tls {") {
			continue
		}
		n++
		compileSrc(t, block)
	}
	if n == 0 {
		t.Error("no TLS example in docs/dsl.md")
	}
}
