package rbac

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"github.com/sluice-proxy/sluice/engine/filters/envoymatch"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// fakeConn is a stream.NetworkCallbacks over fixed connection facts.
type fakeConn struct {
	remote, local netip.AddrPort
	tls           *tls.ConnectionState
	md            stream.Metadata
	closed        bool
}

func (f *fakeConn) RequestHeaders() *header.Map       { return nil }
func (f *fakeConn) ResponseHeaders() *header.Map      { return nil }
func (f *fakeConn) ResponseTrailers() *header.Map     { return nil }
func (f *fakeConn) ResponseCode() int                 { return 0 }
func (f *fakeConn) RequestID() string                 { return "" }
func (f *fakeConn) StartTime() time.Time              { return time.Time{} }
func (f *fakeConn) Protocol() string                  { return "" }
func (f *fakeConn) DownstreamRemote() netip.AddrPort  { return f.remote }
func (f *fakeConn) DownstreamLocal() netip.AddrPort   { return f.local }
func (f *fakeConn) TLS() *tls.ConnectionState         { return f.tls }
func (f *fakeConn) UpstreamAddress() string           { return "" }
func (f *fakeConn) RouteName() string                 { return "" }
func (f *fakeConn) ClusterName() string               { return "" }
func (f *fakeConn) RequestBodySize() int64            { return 0 }
func (f *fakeConn) ResponseBodySize() int64           { return 0 }
func (f *fakeConn) ConnectionID() uint64              { return 7 }
func (f *fakeConn) Context() context.Context          { return context.Background() }
func (f *fakeConn) WriteDownstream([]byte) error      { return nil }
func (f *fakeConn) WriteUpstream([]byte) error        { return nil }
func (f *fakeConn) Close()                            { f.closed = true }
func (f *fakeConn) DynamicMetadata() *stream.Metadata { return &f.md }
func (f *fakeConn) Logger() *slog.Logger              { return slog.New(slog.DiscardHandler) }

var _ stream.NetworkCallbacks = (*fakeConn)(nil)

type connOpt func(*fakeConn)

func from(addr string) connOpt { return func(c *fakeConn) { c.remote = netip.MustParseAddrPort(addr) } }
func to(addr string) connOpt   { return func(c *fakeConn) { c.local = netip.MustParseAddrPort(addr) } }
func sni(name string) connOpt {
	return func(c *fakeConn) {
		if c.tls == nil {
			c.tls = &tls.ConnectionState{}
		}
		c.tls.ServerName = name
	}
}

// peerID makes the connection mTLS with a client certificate for spiffeID.
func peerID(spiffeID string) connOpt {
	return func(c *fakeConn) {
		if c.tls == nil {
			c.tls = &tls.ConnectionState{}
		}
		u, _ := url.Parse(spiffeID)
		c.tls.PeerCertificates = []*x509.Certificate{{URIs: []*url.URL{u}, Subject: pkix.Name{CommonName: "client"}, Signature: []byte(spiffeID)}}
	}
}

func newConn(opts ...connOpt) *fakeConn {
	c := &fakeConn{remote: netip.MustParseAddrPort("10.0.0.1:40000"), local: netip.MustParseAddrPort("10.1.0.1:8080")}
	for _, o := range opts {
		o(c)
	}
	return c
}

func netConfig(t testing.TB, src string) *netrbacv3.RBAC {
	t.Helper()
	m := &netrbacv3.RBAC{}
	fromYAML(t, src, m)
	return m
}

func compileNet(t testing.TB, st *observe.Store, src string) stream.NetworkFactory {
	t.Helper()
	f, err := Compiler{Stats: st}.CompileNetworkFilter(netConfig(t, src))
	if err != nil {
		t.Fatalf("compile: %v\n%s", err, src)
	}
	return f
}

func counter(st *observe.Store, name string) uint64 {
	for _, m := range st.Metrics() {
		if m.Name == name {
			return uint64(m.Value)
		}
	}
	return 0
}

func TestNetworkRBAC(t *testing.T) {
	const (
		srcIP   = `{ principals: [{ source_ip: { address_prefix: 192.168.0.0, prefix_len: 16 } }], permissions: [{ any: true }] }`
		dstPort = `{ permissions: [{ destination_port: 5432 }], principals: [{ any: true }] }`
		authn   = `{ permissions: [{ any: true }], principals: [{ authenticated: { principal_name: { exact: "spiffe://cluster.local/ns/app/sa/client" } } }] }`
		server  = `{ permissions: [{ requested_server_name: { suffix: ".internal" } }], principals: [{ any: true }] }`
		// Needs HTTP attributes: never matches a connection.
		hdr = `{ permissions: [{ header: { name: ":method", string_match: { exact: GET } } }], principals: [{ any: true }] }`
		url = `{ permissions: [{ url_path: { path: { prefix: "/" } } }], principals: [{ any: true }] }`
	)
	cases := []struct {
		name    string
		cfg     string
		conn    *fakeConn
		allowed bool
		policy  string // the effective policy in metadata, "" for none
	}{
		{"allow source ip", "rules: { action: ALLOW, policies: { p: " + srcIP + " } }", newConn(from("192.168.3.4:1000")), true, "p"},
		{"allow source ip, other", "rules: { action: ALLOW, policies: { p: " + srcIP + " } }", newConn(from("10.0.0.9:1000")), false, ""},
		{"deny source ip", "rules: { action: DENY, policies: { p: " + srcIP + " } }", newConn(from("192.168.3.4:1000")), false, "p"},
		{"deny source ip, other", "rules: { action: DENY, policies: { p: " + srcIP + " } }", newConn(from("10.0.0.9:1000")), true, ""},
		{"allow destination port", "rules: { action: ALLOW, policies: { db: " + dstPort + " } }", newConn(to("10.1.0.1:5432")), true, "db"},
		{"allow destination port, other", "rules: { action: ALLOW, policies: { db: " + dstPort + " } }", newConn(to("10.1.0.1:5433")), false, ""},
		{"deny destination port", "rules: { action: DENY, policies: { db: " + dstPort + " } }", newConn(to("10.1.0.1:5432")), false, "db"},
		{"allow principal", "rules: { action: ALLOW, policies: { id: " + authn + " } }", newConn(peerID("spiffe://cluster.local/ns/app/sa/client")), true, "id"},
		{"allow principal, other", "rules: { action: ALLOW, policies: { id: " + authn + " } }", newConn(peerID("spiffe://cluster.local/ns/app/sa/other")), false, ""},
		{"allow principal, plaintext", "rules: { action: ALLOW, policies: { id: " + authn + " } }", newConn(), false, ""},
		{"deny principal", "rules: { action: DENY, policies: { id: " + authn + " } }", newConn(peerID("spiffe://cluster.local/ns/app/sa/client")), false, "id"},
		{"allow sni", "rules: { action: ALLOW, policies: { s: " + server + " } }", newConn(sni("db.internal")), true, "s"},
		{"allow sni, other", "rules: { action: ALLOW, policies: { s: " + server + " } }", newConn(sni("db.example")), false, ""},
		{"allow sni, plaintext", "rules: { action: ALLOW, policies: { s: " + server + " } }", newConn(), false, ""},
		{"deny sni", "rules: { action: DENY, policies: { s: " + server + " } }", newConn(sni("db.internal")), false, "s"},
		{"log matches", "rules: { action: LOG, policies: { p: " + srcIP + " } }", newConn(from("192.168.3.4:1000")), true, "p"},
		{"log does not match", "rules: { action: LOG, policies: { p: " + srcIP + " } }", newConn(), true, ""},
		{"allow header policy never matches", "rules: { action: ALLOW, policies: { h: " + hdr + ", u: " + url + " } }", newConn(), false, ""},
		{"deny header policy never matches", "rules: { action: DENY, policies: { h: " + hdr + ", u: " + url + " } }", newConn(), true, ""},
		{"first policy in name order", "rules: { action: DENY, policies: { b: " + srcIP + ", a: " + dstPort + " } }", newConn(from("192.168.3.4:1000"), to("1.2.3.4:5432")), false, "a"},
		{"inverted header matcher matches the empty headers", "rules: { action: ALLOW, policies: { i: { permissions: [{ header: { name: x, present_match: true, invert_match: true } }], principals: [{ any: true }] } } }", newConn(), true, "i"},
		{"empty allow", "rules: { action: ALLOW }", newConn(), false, ""},
		{"empty deny", "rules: { action: DENY }", newConn(), true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := observe.NewStore()
			f := compileNet(t, st, "stat_prefix: tcp.\n"+tc.cfg)
			nf := f.NewNetworkFilter(tc.conn)
			got := nf.OnNewConnection() == stream.NetworkContinue
			if got != tc.allowed || tc.conn.closed == tc.allowed {
				t.Fatalf("allowed %v (closed %v), want %v", got, tc.conn.closed, tc.allowed)
			}
			a, d := counter(st, "tcp.rbac.allowed"), counter(st, "tcp.rbac.denied")
			if tc.allowed && (a != 1 || d != 0) || !tc.allowed && (a != 0 || d != 1) {
				t.Errorf("tcp.rbac.allowed %d, denied %d", a, d)
			}
			result := "denied"
			if tc.allowed {
				result = "allowed"
			}
			if v, _ := tc.conn.md.Get(NetworkMetadataNamespace, KeyEnforcedResult); v != result {
				t.Errorf("%s = %v, want %s", KeyEnforcedResult, v, result)
			}
			v, ok := tc.conn.md.Get(NetworkMetadataNamespace, KeyEnforcedPolicy)
			if tc.policy == "" && ok || tc.policy != "" && v != tc.policy {
				t.Errorf("%s = %v, want %q", KeyEnforcedPolicy, v, tc.policy)
			}
			if strings.HasPrefix(tc.name, "log") {
				if v, _ := tc.conn.md.Get(CommonNamespace, KeyAccessLogHint); v != (tc.policy != "") {
					t.Errorf("access_log_hint %v", v)
				}
			}
			// Later data passes through untouched.
			if tc.allowed {
				b := stream.GetBuffer()
				b.Set([]byte("x"))
				if nf.OnDownstreamData(b, false) != stream.NetworkContinue || nf.OnUpstreamData(b, false) != stream.NetworkContinue {
					t.Error("data stopped after an allowed connection")
				}
				nf.OnClose()
			}
		})
	}
}

func TestNetworkRBACShadow(t *testing.T) {
	cfg := `
stat_prefix: tcp.
shadow_rules_stat_prefix: istio_dry_run_
shadow_rules:
  action: DENY
  policies:
    deny-db: { permissions: [{ destination_port: 5432 }], principals: [{ any: true }] }
`
	st := observe.NewStore()
	f := compileNet(t, st, cfg)
	for _, tc := range []struct {
		conn   *fakeConn
		result string
		policy any
	}{
		{newConn(to("10.1.0.1:5432")), "denied", "deny-db"},
		{newConn(to("10.1.0.1:80")), "allowed", nil},
		{newConn(to("10.1.0.1:5432")), "denied", "deny-db"},
	} {
		if st := f.NewNetworkFilter(tc.conn).OnNewConnection(); st != stream.NetworkContinue || tc.conn.closed {
			t.Fatalf("shadow rules enforced: %v", st)
		}
		if v, _ := tc.conn.md.Get(NetworkMetadataNamespace, "istio_dry_run_"+KeyShadowResult); v != tc.result {
			t.Errorf("shadow result %v, want %s", v, tc.result)
		}
		if v, _ := tc.conn.md.Get(NetworkMetadataNamespace, "istio_dry_run_"+KeyShadowPolicy); v != tc.policy {
			t.Errorf("shadow policy %v, want %v", v, tc.policy)
		}
		if _, ok := tc.conn.md.Get(NetworkMetadataNamespace, KeyEnforcedResult); ok {
			t.Error("enforced result without rules")
		}
	}
	if a, d := counter(st, "tcp.rbac.istio_dry_run_shadow_allowed"), counter(st, "tcp.rbac.istio_dry_run_shadow_denied"); a != 1 || d != 2 {
		t.Errorf("shadow_allowed %d, shadow_denied %d; want 1, 2", a, d)
	}
	if a, d := counter(st, "tcp.rbac.allowed"), counter(st, "tcp.rbac.denied"); a != 0 || d != 0 {
		t.Errorf("allowed %d, denied %d without rules", a, d)
	}

	// Both: shadow says deny, rules allow.
	st = observe.NewStore()
	f = compileNet(t, st, cfg+"rules: { action: ALLOW, policies: { all: { permissions: [{ any: true }], principals: [{ any: true }] } } }\n")
	c := newConn(to("10.1.0.1:5432"))
	if f.NewNetworkFilter(c).OnNewConnection() != stream.NetworkContinue {
		t.Fatal("denied")
	}
	if counter(st, "tcp.rbac.allowed") != 1 || counter(st, "tcp.rbac.istio_dry_run_shadow_denied") != 1 {
		t.Error("stats")
	}
}

func TestNetworkRBACConfigErrors(t *testing.T) {
	cases := []struct{ cfg, want string }{
		{"stat_prefix: x.\nenforcement_type: CONTINUOUS", "rbac: enforcement_type: CONTINUOUS not supported"},
		{"stat_prefix: x.\ndelay_deny: 1s", "rbac: delay_deny: field not supported"},
		{"stat_prefix: x.\nmatcher: { matcher_list: { matchers: [] } }", "rbac: matcher: field not supported"},
		{"rules: { action: ALLOW }", "rbac: stat_prefix: must not be empty"},
		{"stat_prefix: x.\nrules: { policies: { p: { permissions: [{ uri_template: { name: t } }], principals: [{ any: true }] } } }",
			"rbac: rules.policies[p].permissions[0].uri_template: field not supported"},
		{"stat_prefix: x.\nshadow_rules: { policies: { p: { permissions: [{ any: true }], principals: [{ filter_state: { key: k } }] } } }",
			"rbac: shadow_rules.policies[p].principals[0].filter_state: field not supported"},
		{"stat_prefix: x.\nrules: { policies: { p: { permissions: [{ any: true }], principals: [{ any: true }], condition: { const_expr: { bool_value: true } } } } }",
			"rbac: rules.policies[p].condition: "},
	}
	for _, tc := range cases {
		_, err := Compiler{Stats: observe.NewStore()}.CompileNetworkFilter(netConfig(t, tc.cfg))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.cfg, err, tc.want)
		}
		if strings.Contains(tc.want, "not supported") && !errors.Is(err, envoymatch.ErrUnsupported) {
			t.Errorf("%v does not wrap envoymatch.ErrUnsupported", err)
		}
	}
	if _, err := (Compiler{}).CompileNetworkFilter(filterConfig(t, "rules: { action: ALLOW }")); err == nil || !strings.HasPrefix(err.Error(), "rbac: network config is") {
		t.Errorf("HTTP config as network config: %v", err)
	}
	// No rules: the filter enforces nothing.
	f := compileNet(t, observe.NewStore(), "stat_prefix: x.")
	if c := newConn(); f.NewNetworkFilter(c).OnNewConnection() != stream.NetworkContinue || c.closed {
		t.Error("a config without rules denied")
	}
}
