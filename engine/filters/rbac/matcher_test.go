package rbac

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/tls/tlstest"
)

// A case is one request against one matcher: mod shapes the request.
type matchCase struct {
	name string
	mod  func(*fakeStream)
	want bool
}

func withHeaders(kv ...string) func(*fakeStream) {
	return func(s *fakeStream) {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i][0] == ':' {
				s.req.Set(kv[i], kv[i+1])
			} else {
				s.req.Add(kv[i], kv[i+1])
			}
		}
	}
}

func withRemote(a string) func(*fakeStream) {
	return func(s *fakeStream) { s.remote = netip.MustParseAddrPort(a) }
}

func withLocal(a string) func(*fakeStream) {
	return func(s *fakeStream) { s.local = netip.MustParseAddrPort(a) }
}

func withTLS(st *tls.ConnectionState) func(*fakeStream) {
	return func(s *fakeStream) { s.tls = st }
}

func none(*fakeStream) {}

func runCases(t *testing.T, m matcher, cases []matchCase) {
	t.Helper()
	for _, c := range cases {
		s := newStream()
		c.mod(s)
		if got := eval(m, s); got != c.want {
			t.Errorf("%s: match = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPermissions(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		cases []matchCase
	}{
		{"any", `any: true`, []matchCase{{"always", none, true}}},
		{"header exact", `header: {name: x-a, exact_match: v}`, []matchCase{
			{"equal", withHeaders("x-a", "v"), true},
			{"name case ignored", withHeaders("X-A", "v"), true},
			{"value differs", withHeaders("x-a", "V"), false},
			{"missing", none, false},
		}},
		{"header presence by empty exact", `header: {name: x-a}`, []matchCase{
			{"present", withHeaders("x-a", ""), true},
			{"missing", none, false},
		}},
		{"header prefix suffix contains", `or_rules: {rules: [
			{header: {name: a, prefix_match: pre}},
			{header: {name: b, suffix_match: suf}},
			{header: {name: c, contains_match: mid}}]}`, []matchCase{
			{"prefix", withHeaders("a", "prefix"), true},
			{"suffix", withHeaders("b", "a-suf"), true},
			{"contains", withHeaders("c", "amidb"), true},
			{"none", withHeaders("a", "xpre", "b", "sufx", "c", "m-id"), false},
		}},
		{"header safe_regex is a full match", `header: {name: x, safe_regex_match: {regex: "v[0-9]+"}}`, []matchCase{
			{"full", withHeaders("x", "v12"), true},
			{"partial", withHeaders("x", "av12"), false},
		}},
		{"header present", `header: {name: x, present_match: true}`, []matchCase{
			{"present", withHeaders("x", ""), true},
			{"missing", none, false},
		}},
		{"header absent", `header: {name: x, present_match: false}`, []matchCase{
			{"present", withHeaders("x", "1"), false},
			{"missing", none, true},
		}},
		{"header absent inverted", `header: {name: x, present_match: false, invert_match: true}`, []matchCase{
			{"present", withHeaders("x", "1"), true},
			{"missing", none, false},
		}},
		{"header present inverted", `header: {name: x, present_match: true, invert_match: true}`, []matchCase{
			{"present", withHeaders("x", "1"), false},
			{"missing (Envoy: an inverted present match on a missing header matches)", none, true},
		}},
		{"header range", `header: {name: "n", range_match: {start: 10, end: 20}}`, []matchCase{
			{"start", withHeaders("N", "10"), true},
			{"end excluded", withHeaders("N", "20"), false},
			{"not a number", withHeaders("N", "1x"), false},
			{"negative", withHeaders("N", "-5"), false},
		}},
		{"header inverted", `header: {name: x, exact_match: v, invert_match: true}`, []matchCase{
			{"equal", withHeaders("x", "v"), false},
			{"differs", withHeaders("x", "w"), true},
			{"missing never matches", none, false},
		}},
		{"header string_match ignore_case", `header: {name: x, string_match: {exact: AbC, ignore_case: true}}`, []matchCase{
			{"folded", withHeaders("x", "aBc"), true},
			{"differs", withHeaders("x", "abd"), false},
		}},
		{"header string_match prefix ignore_case", `header: {name: x, string_match: {prefix: BEAR, ignore_case: true}}`, []matchCase{
			{"folded", withHeaders("x", "Bearer t"), true},
			{"short", withHeaders("x", "Be"), false},
		}},
		{"header string_match contains ignore_case", `header: {name: x, string_match: {contains: MID, ignore_case: true}}`, []matchCase{
			{"folded", withHeaders("x", "aMiDb"), true},
			{"differs", withHeaders("x", "m-i-d"), false},
		}},
		{"header treat_missing_header_as_empty", `header: {name: x, string_match: {exact: ""}, treat_missing_header_as_empty: true, invert_match: true}`, []matchCase{
			{"missing is empty", none, false},
			{"set", withHeaders("x", "1"), true},
		}},
		{"repeated header values are joined", `header: {name: x, exact_match: "a,b"}`, []matchCase{
			{"two fields", withHeaders("x", "a", "X", "b"), true},
			{"one field", withHeaders("x", "a"), false},
		}},
		{"header on a pseudo-header", `header: {name: ":method", exact_match: POST}`, []matchCase{
			{"post", withHeaders(":method", "POST"), true},
			{"get", none, false},
		}},
		{"url_path", `url_path: {path: {prefix: /api/}}`, []matchCase{
			{"prefix", withHeaders(":path", "/api/v1?x=/other"), true},
			{"query is not the path", withHeaders(":path", "/x?/api/"), false},
		}},
		{"url_path exact strips query and fragment", `url_path: {path: {exact: /a}}`, []matchCase{
			{"query", withHeaders(":path", "/a?b"), true},
			{"fragment", withHeaders(":path", "/a#f"), true},
			{"longer", withHeaders(":path", "/ab"), false},
		}},
		{"url_path ignore_case", `url_path: {path: {suffix: .JSON, ignore_case: true}}`, []matchCase{
			{"folded", withHeaders(":path", "/a.json"), true},
		}},
		{"destination_ip", `destination_ip: {address_prefix: 10.1.0.0, prefix_len: 16}`, []matchCase{
			{"inside", none, true},
			{"outside", withLocal("10.2.0.1:8080"), false},
			{"v4-mapped", withLocal("[::ffff:10.1.2.3]:80"), true},
			{"v6 never in a v4 range", withLocal("[2001:db8::1]:80"), false},
		}},
		{"destination_ip v6", `destination_ip: {address_prefix: "2001:db8::", prefix_len: 32}`, []matchCase{
			{"inside", withLocal("[2001:db8::1]:80"), true},
			{"v4", none, false},
		}},
		{"destination_ip without prefix_len is /0 (Envoy)", `destination_ip: {address_prefix: 192.168.0.1}`, []matchCase{
			{"any v4", none, true},
			{"not v6", withLocal("[::1]:80"), false},
		}},
		{"destination_port", `destination_port: 8080`, []matchCase{
			{"equal", none, true},
			{"other", withLocal("10.1.0.1:80"), false},
		}},
		{"destination_port_range", `destination_port_range: {start: 8000, end: 8080}`, []matchCase{
			{"end excluded", none, false},
			{"start", withLocal("10.1.0.1:8000"), true},
		}},
		{"requested_server_name", `requested_server_name: {suffix: .example.com}`, []matchCase{
			{"sni", withTLS(&tls.ConnectionState{ServerName: "api.example.com"}), true},
			{"no tls", none, false},
		}},
		{"requested_server_name empty without tls", `requested_server_name: {exact: ""}`, []matchCase{
			{"no tls", none, true},
		}},
		{"and_rules", `and_rules: {rules: [{header: {name: ":method", exact_match: GET}}, {url_path: {path: {prefix: /a}}}]}`, []matchCase{
			{"both", withHeaders(":path", "/ab"), true},
			{"one", withHeaders(":path", "/b"), false},
		}},
		{"not_rule", `not_rule: {url_path: {path: {prefix: /admin}}}`, []matchCase{
			{"admin", withHeaders(":path", "/admin/x"), false},
			{"other", withHeaders(":path", "/x"), true},
		}},
		{"nesting", `or_rules: {rules: [
			{and_rules: {rules: [{header: {name: ":method", exact_match: POST}}, {not_rule: {url_path: {path: {prefix: /ro/}}}}]}},
			{and_rules: {rules: [{destination_port: 9090}, {any: true}]}}]}`, []matchCase{
			{"post outside /ro", withHeaders(":method", "POST", ":path", "/w"), true},
			{"post under /ro", withHeaders(":method", "POST", ":path", "/ro/x"), false},
			{"get on 9090", withLocal("10.1.0.1:9090"), true},
			{"get on 8080", none, false},
		}},
		{"metadata", `metadata: {filter: envoy.filters.http.jwt_authn, path: [{key: payload}, {key: iss}], value: {string_match: {exact: issuer}}}`, []matchCase{
			{"nested", func(s *fakeStream) {
				s.md.Set("envoy.filters.http.jwt_authn", "payload", map[string]any{"iss": "issuer"})
			}, true},
			{"other value", func(s *fakeStream) {
				s.md.Set("envoy.filters.http.jwt_authn", "payload", map[string]any{"iss": "x"})
			}, false},
			{"missing", none, false},
		}},
		{"metadata kinds", `or_rules: {rules: [
			{metadata: {filter: f, path: [{key: "b"}], value: {bool_match: true}}},
			{metadata: {filter: f, path: [{key: "num"}], value: {double_match: {range: {start: 1, end: 2}}}}},
			{metadata: {filter: f, path: [{key: l}], value: {list_match: {one_of: {string_match: {exact: x}}}}}},
			{metadata: {filter: f, path: [{key: z}], value: {null_match: {}}}}]}`, []matchCase{
			{"bool", func(s *fakeStream) { s.md.Set("f", "b", true) }, true},
			{"bool false", func(s *fakeStream) { s.md.Set("f", "b", false) }, false},
			{"number", func(s *fakeStream) { s.md.Set("f", "num", 1.5) }, true},
			{"int", func(s *fakeStream) { s.md.Set("f", "num", 1) }, true},
			{"list", func(s *fakeStream) { s.md.Set("f", "l", []any{"a", "x"}) }, true},
			{"null", func(s *fakeStream) { s.md.Set("f", "z", nil) }, true},
			{"nothing", none, false},
		}},
		{"metadata present inverted", `metadata: {filter: f, path: [{key: k}], value: {present_match: true}, invert: true}`, []matchCase{
			{"present", func(s *fakeStream) { s.md.Set("f", "k", "v") }, false},
			{"missing", none, true},
		}},
		{"sourced_metadata from the route", `sourced_metadata: {metadata_source: ROUTE, metadata_matcher: {filter: istio, path: [{key: tier}], value: {string_match: {exact: gold}}}}`, []matchCase{
			{"route", func(s *fakeStream) { s.routeMD = map[string]map[string]any{"istio": {"tier": "gold"}} }, true},
			{"dynamic is not the route", func(s *fakeStream) { s.md.Set("istio", "tier", "gold") }, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := compilePermission(permission(t, tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			runCases(t, m, tt.cases)
		})
	}
}

// peer returns the TLS state of a connection whose client presented a
// certificate with names.
func peer(t *testing.T, names ...string) *tls.ConnectionState {
	ca := tlstest.NewCA(t, "test-ca")
	leaf := ca.Issue(t, names...)
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf.Cert}}
}

func TestPrincipals(t *testing.T) {
	spiffe := peer(t, "spiffe://cluster.local/ns/default/sa/sleep")
	dns := peer(t, "client.example.com", "alt.example.com")
	tests := []struct {
		name  string
		yaml  string
		cases []matchCase
	}{
		{"any", `any: true`, []matchCase{{"always", none, true}}},
		{"authenticated without a name", `authenticated: {}`, []matchCase{
			{"plain text", none, false},
			{"tls without a client certificate", withTLS(&tls.ConnectionState{}), true},
			{"mtls", withTLS(spiffe), true},
		}},
		{"authenticated URI SAN", `authenticated: {principal_name: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}}`, []matchCase{
			{"uri", withTLS(spiffe), true},
			{"other peer", withTLS(dns), false},
			{"no client certificate", withTLS(&tls.ConnectionState{}), false},
			{"plain text", none, false},
		}},
		{"authenticated DNS SAN", `authenticated: {principal_name: {exact: alt.example.com}}`, []matchCase{
			{"second dns name", withTLS(dns), true},
		}},
		{"authenticated subject", `authenticated: {principal_name: {exact: "CN=client.example.com"}}`, []matchCase{
			{"subject", withTLS(dns), true},
			{"uri peer has an empty subject", withTLS(spiffe), false},
		}},
		{"authenticated regex", `authenticated: {principal_name: {safe_regex: {regex: "spiffe://cluster.local/ns/default/.*"}}}`, []matchCase{
			{"namespace", withTLS(spiffe), true},
		}},
		{"source_ip", `source_ip: {address_prefix: 10.0.0.0, prefix_len: 24}`, []matchCase{
			{"inside", none, true},
			{"outside", withRemote("10.0.1.1:1"), false},
		}},
		{"direct_remote_ip", `direct_remote_ip: {address_prefix: 10.0.0.1, prefix_len: 32}`, []matchCase{
			{"exact", none, true},
			{"other", withRemote("10.0.0.2:1"), false},
		}},
		{"remote_ip v6", `remote_ip: {address_prefix: "fd00::", prefix_len: 8}`, []matchCase{
			{"inside", withRemote("[fd12::1]:1"), true},
			{"v4", none, false},
		}},
		{"header", `header: {name: x-user, exact_match: alice}`, []matchCase{
			{"alice", withHeaders("x-user", "alice"), true},
			{"bob", withHeaders("x-user", "bob"), false},
		}},
		{"url_path", `url_path: {path: {exact: /login}}`, []matchCase{
			{"login", withHeaders(":path", "/login?next=/"), true},
		}},
		{"metadata", `metadata: {filter: f, path: [{key: user}], value: {string_match: {prefix: adm}}}`, []matchCase{
			{"admin", func(s *fakeStream) { s.md.Set("f", "user", "admin") }, true},
		}},
		{"and_ids or_ids not_id", `and_ids: {ids: [
			{or_ids: {ids: [{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}, {header: {name: x-trusted, present_match: true}}]}},
			{not_id: {header: {name: x-banned, present_match: true}}}]}`, []matchCase{
			{"internal", none, true},
			{"internal banned", withHeaders("x-banned", "1"), false},
			{"external trusted", func(s *fakeStream) { withRemote("8.8.8.8:1")(s); withHeaders("x-trusted", "1")(s) }, true},
			{"external", withRemote("8.8.8.8:1"), false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := compilePrincipal(principal(t, tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			runCases(t, m, tt.cases)
		})
	}
}

// The names of a peer certificate are formatted once and cached, and the
// cache is checked against the certificate.
func TestPeerIdentityCache(t *testing.T) {
	a := peer(t, "spiffe://td/a")
	b := peer(t, "spiffe://td/b")
	m, err := compilePrincipal(principal(t, `authenticated: {principal_name: {exact: "spiffe://td/a"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for _, c := range []struct {
			st   *tls.ConnectionState
			want bool
		}{{a, true}, {b, false}} {
			s := newStream()
			s.tls = c.st
			if got := eval(m, s); got != c.want {
				t.Fatalf("peer %v: %v, want %v", c.st.PeerCertificates[0].URIs, got, c.want)
			}
		}
	}
	s := newStream()
	s.tls = a
	var r request // in the filter, request lives in the per-stream filter
	if n := testing.AllocsPerRun(100, func() { r.reset(s, &s.req); m.match(&r) }); n != 0 {
		t.Errorf("authenticated match of a seen certificate: %v allocs, want 0", n)
	}
}

func TestMatcherConfigErrors(t *testing.T) {
	perms := []struct{ yaml, want string }{
		{`header: {name: x, safe_regex_match: {regex: "("}}`, "header.safe_regex_match.regex: invalid regex"},
		{`header: {name: x, range_match: {start: 5, end: 5}}`, "header.range_match: start 5 must be less than end 5"},
		{`header: {name: x, string_match: {custom: {name: c}}}`, "header.string_match.custom: field not supported"},
		{`destination_ip: {address_prefix: 10.0.0.300, prefix_len: 8}`, "destination_ip.address_prefix: invalid IP address"},
		{`destination_ip: {address_prefix: 10.0.0.0, prefix_len: 33}`, "destination_ip.prefix_len: 33 is longer than an IPv4 address"},
		{`destination_port_range: {start: 10, end: 5}`, "destination_port_range: range start 10 must be less than range end 5"},
		{`destination_port_range: {start: 0, end: 70000}`, "destination_port_range: range end 70000 is out of bounds"},
		{`destination_port: 70000`, "destination_port: 70000 is not a port"},
		{`and_rules: {rules: [{any: true}, {uri_template: {name: t}}]}`, "and_rules.rules[1].uri_template: field not supported"},
		{`or_rules: {rules: []}`, "or_rules.rules: at least one is required"},
		{`matcher: {name: m}`, "matcher: field not supported"},
		{`any: false`, "any: must be true"},
		{`metadata: {filter: f, path: [{key: k}], value: {or_match: {value_matchers: [{bool_match: true}]}}}`, "metadata.value.or_match.value_matchers: at least two are required"},
		{`sourced_metadata: {metadata_matcher: {filter: f, value: {present_match: true}}}`, "sourced_metadata.metadata_matcher.path: at least one key is required"},
		{`{}`, "a rule is required"},
	}
	for _, c := range perms {
		_, err := compilePermission(permission(t, c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("permission %s: error %v, want %q", c.yaml, err, c.want)
		}
	}
	ids := []struct{ yaml, want string }{
		{`filter_state: {key: k, string_match: {exact: v}}`, "filter_state: field not supported"},
		{`custom: {name: c}`, "custom: field not supported"},
		{`not_id: {and_ids: {ids: [{source_ip: {address_prefix: nope}}]}}`, "not_id.and_ids.ids[0].source_ip.address_prefix: invalid IP address"},
		{`authenticated: {principal_name: {safe_regex: {regex: "["}}}`, "authenticated.principal_name.safe_regex.regex: invalid regex"},
	}
	for _, c := range ids {
		_, err := compilePrincipal(principal(t, c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("principal %s: error %v, want %q", c.yaml, err, c.want)
		}
	}
}

// ignore_case folds ASCII only, as Envoy's: non-ASCII bytes compare as
// they are.
func TestIgnoreCaseIsASCII(t *testing.T) {
	m, err := compilePermission(permission(t, `header: {name: x, string_match: {exact: "CAFÉ", ignore_case: true}}`))
	if err != nil {
		t.Fatal(err)
	}
	runCases(t, m, []matchCase{
		{"ascii folded", withHeaders("x", "cafÉ"), true},
		{"non-ascii not folded", withHeaders("x", "café"), false},
	})
}
