package tls

import (
	"context"
	ctls "crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

func fileCert(certFile, keyFile string) config.Certificate {
	return config.Certificate{Chain: config.DataSource{Filename: certFile}, Key: config.DataSource{Filename: keyFile}}
}

func inlineCert(l *tlstest.Leaf) config.Certificate {
	return config.Certificate{Chain: config.DataSource{Inline: l.CertPEM}, Key: config.DataSource{Inline: l.KeyPEM}}
}

// handshake runs a TLS handshake over a pipe and returns both sides'
// states, or the first error.
func handshake(t *testing.T, server, client *ctls.Config) (ss, cs ctls.ConnectionState, err error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv, cli := ctls.Server(a, server), ctls.Client(b, client)
	errc := make(chan error, 1)
	go func() {
		err := srv.HandshakeContext(ctx)
		if err != nil {
			a.Close() // unblock the client
		}
		errc <- err
	}()
	cerr := cli.HandshakeContext(ctx)
	if cerr != nil {
		b.Close()
	} else {
		// In TLS 1.3 the client is done before the server has checked
		// its certificate: read, so the server's alert or session
		// tickets do not block on the unbuffered pipe.
		go cli.Read(make([]byte, 1))
	}
	serr := <-errc
	if cerr != nil {
		return ss, cs, cerr
	}
	if serr != nil {
		return ss, cs, serr
	}
	return srv.ConnectionState(), cli.ConnectionState(), nil
}

func TestServerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	good := ca.Issue(t, "good.example.com")
	other := ca.Issue(t, "other.example.com")
	certFile, keyFile := good.WriteFiles(t, dir, "good")
	_, otherKey := other.WriteFiles(t, dir, "other")
	garbage := filepath.Join(dir, "garbage.pem")
	tlstest.WriteFile(t, garbage, []byte("not a certificate\n"))
	missing := filepath.Join(dir, "missing.pem")
	caFile := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(t, caFile, ca.CertPEM)

	ok := func() *config.DownstreamTLS {
		return &config.DownstreamTLS{Certificates: []config.Certificate{fileCert(certFile, keyFile)}}
	}
	tests := []struct {
		name    string
		mod     func(d *config.DownstreamTLS)
		wantErr []string
	}{
		{name: "valid", mod: func(*config.DownstreamTLS) {}},
		{name: "no certificate", mod: func(d *config.DownstreamTLS) { d.Certificates = nil },
			wantErr: []string{"tls: downstream TLS has no certificate"}},
		{name: "missing certificate file", mod: func(d *config.DownstreamTLS) { d.Certificates[0].Chain.Filename = missing },
			wantErr: []string{`tls: certificate "` + missing + `"`, "no such file"}},
		{name: "missing key file", mod: func(d *config.DownstreamTLS) { d.Certificates[0].Key.Filename = missing },
			wantErr: []string{`tls: private key "` + missing + `"`, "no such file"}},
		{name: "not PEM", mod: func(d *config.DownstreamTLS) { d.Certificates[0].Chain.Filename = garbage },
			wantErr: []string{`tls: certificate "` + garbage + `": no PEM CERTIFICATE block`}},
		{name: "key does not match", mod: func(d *config.DownstreamTLS) { d.Certificates[0].Key.Filename = otherKey },
			wantErr: []string{`tls: certificate "` + certFile + `" with key "` + otherKey + `": private key does not match public key`}},
		{name: "empty data source", mod: func(d *config.DownstreamTLS) { d.Certificates[0].Key = config.DataSource{} },
			wantErr: []string{`tls: private key "<inline>": empty`}},
		{name: "unknown min version", mod: func(d *config.DownstreamTLS) { d.Params.MinVersion = "TLSv1_4" },
			wantErr: []string{`tls: unknown minimum version "TLSv1_4"`}},
		{name: "min above max", mod: func(d *config.DownstreamTLS) { d.Params.MinVersion, d.Params.MaxVersion = "TLSv1_3", "TLSv1_2" },
			wantErr: []string{"tls: minimum version TLSv1_3 is above maximum version TLSv1_2"}},
		{name: "unknown cipher", mod: func(d *config.DownstreamTLS) {
			d.Params.CipherSuites = []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "RC4-MD5"}
		},
			wantErr: []string{`tls: unknown cipher suite "RC4-MD5"`}},
		{name: "client certificate without CA", mod: func(d *config.DownstreamTLS) { d.RequireClientCertificate = true },
			wantErr: []string{"tls: client certificate required but no client CA set"}},
		{name: "client CA not PEM", mod: func(d *config.DownstreamTLS) { d.ClientCA.Filename = garbage },
			wantErr: []string{`tls: client CA "` + garbage + `": no PEM certificate found`}},
		{name: "client CA missing", mod: func(d *config.DownstreamTLS) { d.ClientCA.Filename = missing },
			wantErr: []string{`tls: client CA "` + missing + `"`, "no such file"}},
		{name: "client CA", mod: func(d *config.DownstreamTLS) { d.ClientCA.Filename = caFile; d.RequireClientCertificate = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ok()
			tt.mod(d)
			_, err := ServerConfig(d, nil)
			checkErr(t, err, tt.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestServerConfigSNI(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	first := ca.Issue(t, "first.example.com")
	exact := ca.Issue(t, "api.example.com", "API2.example.com")
	wild := ca.Issue(t, "*.apps.example.com")
	cfg, err := ServerConfig(&config.DownstreamTLS{Certificates: []config.Certificate{
		inlineCert(first), inlineCert(exact), inlineCert(wild),
	}}, []string{"h2", "http/1.1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sni  string
		want string // leaf CN
	}{
		{"api.example.com", "api.example.com"},
		{"api2.example.com", "api.example.com"}, // names are case-insensitive
		{"API.EXAMPLE.COM.", "api.example.com"}, // and a trailing dot is ignored
		{"x.apps.example.com", "*.apps.example.com"},
		{"a.b.apps.example.com", "first.example.com"}, // a wildcard covers one label
		{"apps.example.com", "first.example.com"},
		{"unknown.example.org", "first.example.com"},
		{"", "first.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			_, cs, err := handshake(t, cfg, &ctls.Config{ServerName: tt.sni, InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := cs.PeerCertificates[0].Subject.CommonName; got != tt.want {
				t.Errorf("served %q, want %q", got, tt.want)
			}
		})
	}
}

func TestServerConfigOptions(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	leaf := ca.Issue(t, "s.example.com")
	certs := []config.Certificate{inlineCert(leaf)}
	tests := []struct {
		name       string
		d          config.DownstreamTLS
		defALPN    []string
		wantALPN   []string
		wantMin    uint16
		wantMax    uint16
		wantSuites []uint16
		wantAuth   ctls.ClientAuthType
	}{
		{name: "defaults", d: config.DownstreamTLS{}, defALPN: []string{"h2", "http/1.1"}, wantALPN: []string{"h2", "http/1.1"}},
		{name: "explicit ALPN wins", d: config.DownstreamTLS{ALPN: []string{"http/1.1"}}, defALPN: []string{"h2"}, wantALPN: []string{"http/1.1"}},
		{name: "versions", d: config.DownstreamTLS{Params: config.TLSParams{MinVersion: "TLSv1_2", MaxVersion: "TLSv1_3"}},
			wantMin: ctls.VersionTLS12, wantMax: ctls.VersionTLS13},
		{name: "auto versions", d: config.DownstreamTLS{Params: config.TLSParams{MinVersion: "TLS_AUTO", MaxVersion: "TLS_AUTO"}}},
		{name: "ciphers", d: config.DownstreamTLS{Params: config.TLSParams{CipherSuites: []string{
			"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}}},
			wantSuites: []uint16{ctls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, ctls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, ctls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}},
		{name: "optional client certificate", d: config.DownstreamTLS{ClientCA: config.DataSource{Inline: ca.CertPEM}}, wantAuth: ctls.VerifyClientCertIfGiven},
		{name: "required client certificate", d: config.DownstreamTLS{ClientCA: config.DataSource{Inline: ca.CertPEM}, RequireClientCertificate: true},
			wantAuth: ctls.RequireAndVerifyClientCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			d.Certificates = certs
			cfg, err := ServerConfig(&d, tt.defALPN)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.NextProtos, tt.wantALPN) && (len(cfg.NextProtos) != 0 || len(tt.wantALPN) != 0) {
				t.Errorf("NextProtos = %q, want %q", cfg.NextProtos, tt.wantALPN)
			}
			if cfg.MinVersion != tt.wantMin || cfg.MaxVersion != tt.wantMax {
				t.Errorf("versions = %x-%x, want %x-%x", cfg.MinVersion, cfg.MaxVersion, tt.wantMin, tt.wantMax)
			}
			if !reflect.DeepEqual(cfg.CipherSuites, tt.wantSuites) {
				t.Errorf("CipherSuites = %x, want %x", cfg.CipherSuites, tt.wantSuites)
			}
			if cfg.ClientAuth != tt.wantAuth {
				t.Errorf("ClientAuth = %v, want %v", cfg.ClientAuth, tt.wantAuth)
			}
		})
	}
}

// The ALPN list of a compiled config is its own: changing the default
// slice later does not change it.
func TestServerConfigCopiesALPN(t *testing.T) {
	leaf := tlstest.NewCA(t, "ca").Issue(t, "s")
	def := []string{"h2", "http/1.1"}
	cfg, err := ServerConfig(&config.DownstreamTLS{Certificates: []config.Certificate{inlineCert(leaf)}}, def)
	if err != nil {
		t.Fatal(err)
	}
	def[0] = "changed"
	if cfg.NextProtos[0] != "h2" {
		t.Errorf("NextProtos = %q", cfg.NextProtos)
	}
}

func TestMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	otherCA := tlstest.NewCA(t, "other")
	srvLeaf := ca.Issue(t, "server.example.com")
	client := ca.Issue(t, "client.example.com")
	stranger := otherCA.Issue(t, "stranger.example.com")
	srv, err := ServerConfig(&config.DownstreamTLS{
		Certificates:             []config.Certificate{inlineCert(srvLeaf)},
		ClientCA:                 config.DataSource{Inline: ca.CertPEM},
		RequireClientCertificate: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		cert   *tlstest.Leaf
		wantOK bool
	}{
		{"trusted client certificate", client, true},
		{"no client certificate", nil, false},
		{"untrusted client certificate", stranger, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := &ctls.Config{RootCAs: ca.Pool(), ServerName: "server.example.com"}
			if tt.cert != nil {
				cc.Certificates = []ctls.Certificate{tt.cert.TLSCertificate(t)}
			}
			ss, _, err := handshake(t, srv, cc)
			if tt.wantOK != (err == nil) {
				t.Fatalf("handshake err = %v, want ok %v", err, tt.wantOK)
			}
			if tt.wantOK && ss.PeerCertificates[0].Subject.CommonName != "client.example.com" {
				t.Errorf("peer = %q", ss.PeerCertificates[0].Subject.CommonName)
			}
		})
	}
}

func TestClientConfig(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	otherCA := tlstest.NewCA(t, "other")
	srvLeaf := ca.Issue(t, "backend.internal", "spiffe://cluster.local/ns/default/sa/backend")
	client := ca.Issue(t, "proxy.internal")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	tlstest.WriteFile(t, caFile, ca.CertPEM)

	// The server asks for (but does not need) a client certificate, and
	// speaks h2 or http/1.1.
	srv := &ctls.Config{
		Certificates: []ctls.Certificate{srvLeaf.TLSCertificate(t)},
		ClientAuth:   ctls.VerifyClientCertIfGiven, ClientCAs: ca.Pool(),
		NextProtos: []string{"h2", "http/1.1"},
	}
	tests := []struct {
		name       string
		u          config.UpstreamTLS
		defALPN    []string
		wantErr    string // substring of the handshake error; "" means success
		wantSNI    string
		wantALPN   string
		wantClient bool
	}{
		{name: "no CA: not verified", u: config.UpstreamTLS{}},
		{name: "CA verifies without SNI", u: config.UpstreamTLS{CA: config.DataSource{Filename: caFile}}},
		{name: "SNI sent", u: config.UpstreamTLS{SNI: "anything.example", CA: config.DataSource{Filename: caFile}}, wantSNI: "anything.example"},
		{name: "wrong CA", u: config.UpstreamTLS{CA: config.DataSource{Inline: otherCA.CertPEM}}, wantErr: "unknown authority"},
		{name: "SAN DNS match", u: config.UpstreamTLS{CA: config.DataSource{Filename: caFile}, SubjectAltNames: []string{"nope", "backend.internal"}}},
		{name: "SAN URI match", u: config.UpstreamTLS{CA: config.DataSource{Filename: caFile}, SubjectAltNames: []string{"spiffe://cluster.local/ns/default/sa/backend"}}},
		{name: "SAN mismatch", u: config.UpstreamTLS{CA: config.DataSource{Filename: caFile}, SubjectAltNames: []string{"frontend.internal"}}, wantErr: "match none of"},
		{name: "SAN checked without CA", u: config.UpstreamTLS{SubjectAltNames: []string{"frontend.internal"}}, wantErr: "match none of"},
		{name: "wrong CA with matching SAN", u: config.UpstreamTLS{CA: config.DataSource{Inline: otherCA.CertPEM}, SubjectAltNames: []string{"backend.internal"}}, wantErr: "unknown authority"},
		{name: "client certificate", u: config.UpstreamTLS{CA: config.DataSource{Filename: caFile}, Certificate: ptr(inlineCert(client))}, wantClient: true},
		{name: "default ALPN", u: config.UpstreamTLS{}, defALPN: []string{"h2"}, wantALPN: "h2"},
		{name: "explicit ALPN", u: config.UpstreamTLS{ALPN: []string{"http/1.1"}}, defALPN: []string{"h2"}, wantALPN: "http/1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc, err := ClientConfig(&tt.u, tt.defALPN)
			if err != nil {
				t.Fatal(err)
			}
			ss, cs, err := handshake(t, srv, cc)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("handshake err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ss.ServerName != tt.wantSNI {
				t.Errorf("SNI = %q, want %q", ss.ServerName, tt.wantSNI)
			}
			if cs.NegotiatedProtocol != tt.wantALPN {
				t.Errorf("ALPN = %q, want %q", cs.NegotiatedProtocol, tt.wantALPN)
			}
			if got := len(ss.PeerCertificates) > 0; got != tt.wantClient {
				t.Errorf("client certificate sent = %v, want %v", got, tt.wantClient)
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.pem")
	tests := []struct {
		name    string
		u       config.UpstreamTLS
		wantErr []string
	}{
		{"missing CA", config.UpstreamTLS{CA: config.DataSource{Filename: missing}}, []string{`tls: CA "` + missing + `"`, "no such file"}},
		{"CA not PEM", config.UpstreamTLS{CA: config.DataSource{Inline: []byte("x")}}, []string{`tls: CA "<inline>": no PEM certificate found`}},
		{"missing client certificate", config.UpstreamTLS{Certificate: &config.Certificate{Chain: config.DataSource{Filename: missing}}},
			[]string{`tls: certificate "` + missing + `"`}},
		{"bad cipher", config.UpstreamTLS{Params: config.TLSParams{CipherSuites: []string{"TLS_AES_128_GCM_SHA256"}}},
			[]string{`tls: cipher suite "TLS_AES_128_GCM_SHA256": TLS 1.3 suites are not configurable`}},
		{"bad version", config.UpstreamTLS{Params: config.TLSParams{MaxVersion: "SSLv3"}}, []string{`tls: unknown maximum version "SSLv3"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ClientConfig(&tt.u, nil)
			checkErr(t, err, tt.wantErr)
		})
	}
}

func TestCipherSuites(t *testing.T) {
	tests := []struct {
		names   []string
		want    []uint16
		wantErr string
	}{
		{names: []string{"ECDHE-ECDSA-AES128-GCM-SHA256"}, want: []uint16{ctls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}},
		{names: []string{"ECDHE-RSA-AES256-GCM-SHA384", "AES128-SHA"}, want: []uint16{ctls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, ctls.TLS_RSA_WITH_AES_128_CBC_SHA}},
		{names: []string{"[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]", "ECDHE-RSA-AES128-GCM-SHA256"},
			want: []uint16{ctls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ctls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}},
		{names: []string{"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}, want: []uint16{ctls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}},
		{names: []string{"ECDHE-ECDSA-AES128-GCM-SHA256", "NULL-MD5"}, wantErr: `tls: unknown cipher suite "NULL-MD5"`},
		{names: []string{"[ECDHE-RSA-AES128-GCM-SHA256|bogus]"}, wantErr: `tls: unknown cipher suite "bogus"`},
		{names: []string{"TLS_CHACHA20_POLY1305_SHA256"}, wantErr: "TLS 1.3 suites are not configurable"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.names, ","), func(t *testing.T) {
			got, err := CipherSuites(tt.names)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr && !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CipherSuites = %x, %v; want %x", got, err, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// Sessions resume on the config that issued the ticket, also when it is
// handed out by a per-connection GetConfigForClient (as the server does
// per filter chain), and never on another chain's config.
func TestSessionResumptionScopedToConfig(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	leaf := ca.Issue(t, "s.example.com")
	compile := func() *ctls.Config {
		cfg, err := ServerConfig(&config.DownstreamTLS{Certificates: []config.Certificate{inlineCert(leaf)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	chainA, chainB := compile(), compile()
	perConn := func(chain *ctls.Config) *ctls.Config {
		return &ctls.Config{GetConfigForClient: func(*ctls.ClientHelloInfo) (*ctls.Config, error) { return chain, nil }}
	}
	for _, v := range []uint16{ctls.VersionTLS12, ctls.VersionTLS13} {
		cache := ctls.NewLRUClientSessionCache(4)
		client := &ctls.Config{ServerName: "s.example.com", RootCAs: ca.Pool(), ClientSessionCache: cache, MaxVersion: v}
		tests := []struct {
			name       string
			server     *ctls.Config
			wantResume bool
		}{
			{"first", perConn(chainA), false},
			{"same chain resumes", perConn(chainA), true},
			{"other chain does not", perConn(chainB), false},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%x/%s", v, tt.name), func(t *testing.T) {
				// Reads inside handshake let TLS 1.3 tickets arrive.
				_, cs, err := handshakeAndRead(t, tt.server, client)
				if err != nil {
					t.Fatal(err)
				}
				if cs.DidResume != tt.wantResume {
					t.Errorf("DidResume = %v, want %v", cs.DidResume, tt.wantResume)
				}
			})
		}
	}
}

// handshakeAndRead is handshake, then one byte from server to client so
// the client has processed the server's session tickets.
func handshakeAndRead(t *testing.T, server, client *ctls.Config) (ss, cs ctls.ConnectionState, err error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	a.SetDeadline(time.Now().Add(5 * time.Second))
	b.SetDeadline(time.Now().Add(5 * time.Second))
	srv, cli := ctls.Server(a, server), ctls.Client(b, client)
	errc := make(chan error, 1)
	go func() {
		if err := srv.Handshake(); err != nil {
			errc <- err
			return
		}
		_, err := srv.Write([]byte{1})
		errc <- err
	}()
	if err := cli.Handshake(); err != nil {
		return ss, cs, err
	}
	if _, err := cli.Read(make([]byte, 1)); err != nil {
		return ss, cs, err
	}
	if err := <-errc; err != nil {
		return ss, cs, err
	}
	return srv.ConnectionState(), cli.ConnectionState(), nil
}

// Client certificates must match ClientSubjectAltNames: any string match,
// on DNS names, URIs or either; a client without a certificate is left to
// RequireClientCertificate.
func TestClientSubjectAltNames(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	srvLeaf := ca.Issue(t, "server.example.com")
	mesh := ca.Issue(t, "ratings.default.svc", "spiffe://cluster.local/ns/default/sa/ratings")
	foreign := ca.Issue(t, "ratings.default.svc", "spiffe://other.local/ns/default/sa/ratings")
	sm := func(kind config.StringMatchKind, v string, fold bool) config.StringMatcher {
		return config.StringMatcher{Kind: kind, Value: v, IgnoreCase: fold}
	}
	tests := []struct {
		name     string
		sans     []config.SANMatcher
		cert     *tlstest.Leaf
		required bool
		wantOK   bool
	}{
		{"prefix, any kind", []config.SANMatcher{{Match: sm(config.MatchPrefix, "spiffe://cluster.local/", false)}}, mesh, false, true},
		{"prefix, other trust domain", []config.SANMatcher{{Match: sm(config.MatchPrefix, "spiffe://cluster.local/", false)}}, foreign, false, false},
		{"exact URI", []config.SANMatcher{{Kind: config.SANURI, Match: sm(config.MatchExact, "spiffe://cluster.local/ns/default/sa/ratings", false)}}, mesh, false, true},
		{"DNS matcher does not test URIs", []config.SANMatcher{{Kind: config.SANDNS, Match: sm(config.MatchPrefix, "spiffe://", false)}}, mesh, false, false},
		{"URI matcher does not test DNS names", []config.SANMatcher{{Kind: config.SANURI, Match: sm(config.MatchExact, "ratings.default.svc", false)}}, mesh, false, false},
		{"suffix ignoring case", []config.SANMatcher{{Kind: config.SANDNS, Match: sm(config.MatchSuffix, ".DEFAULT.SVC", true)}}, mesh, false, true},
		{"contains", []config.SANMatcher{{Match: sm(config.MatchContains, "/ns/default/", false)}}, foreign, false, true},
		{"regex is a full match", []config.SANMatcher{{Match: sm(config.MatchRegex, "spiffe://[a-z.]+", false)}}, mesh, false, false},
		{"regex", []config.SANMatcher{{Match: sm(config.MatchRegex, "spiffe://cluster\\.local/.*", false)}}, mesh, false, true},
		{"one of several", []config.SANMatcher{{Match: sm(config.MatchExact, "nope", false)}, {Match: sm(config.MatchSuffix, "/sa/ratings", false)}}, foreign, false, true},
		{"no certificate, not required", []config.SANMatcher{{Match: sm(config.MatchPrefix, "spiffe://cluster.local/", false)}}, nil, false, true},
		{"no certificate, required", []config.SANMatcher{{Match: sm(config.MatchPrefix, "spiffe://cluster.local/", false)}}, nil, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := ServerConfig(&config.DownstreamTLS{
				Certificates:             []config.Certificate{inlineCert(srvLeaf)},
				ClientCA:                 config.DataSource{Inline: ca.CertPEM},
				RequireClientCertificate: tt.required,
				ClientSubjectAltNames:    tt.sans,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			cc := &ctls.Config{RootCAs: ca.Pool(), ServerName: "server.example.com"}
			if tt.cert != nil {
				cc.Certificates = []ctls.Certificate{tt.cert.TLSCertificate(t)}
			}
			_, _, err = handshake(t, srv, cc)
			if tt.wantOK != (err == nil) {
				t.Fatalf("handshake err = %v, want ok %v", err, tt.wantOK)
			}
		})
	}
	for _, bad := range []struct {
		d    config.DownstreamTLS
		want string
	}{
		{config.DownstreamTLS{ClientSubjectAltNames: []config.SANMatcher{{Match: sm(config.MatchExact, "x", false)}}},
			"client subject alt names to match but no client CA set"},
		{config.DownstreamTLS{ClientCA: config.DataSource{Inline: ca.CertPEM}, ClientSubjectAltNames: []config.SANMatcher{{Match: sm(config.MatchRegex, "(", false)}}},
			"bad regex"},
	} {
		bad.d.Certificates = []config.Certificate{inlineCert(srvLeaf)}
		if _, err := ServerConfig(&bad.d, nil); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ServerConfig: %v, want %q", err, bad.want)
		}
	}
}
