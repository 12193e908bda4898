package compile

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/dsl/syntax"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/engine/stream"
	"github.com/sluice-proxy/sluice/protocols/http1"
)

var testEnv = func() *expr.Env {
	e, err := expr.NewEnv()
	if err != nil {
		panic(err)
	}
	return e
}()

// files serves in-memory files to Load.
func files(m map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := m[p]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
}

func compileSrc(t testing.TB, src string) *Result {
	t.Helper()
	res, err := Load("t.sluice", files(map[string]string{"t.sluice": src}), testEnv)
	if err != nil {
		t.Fatalf("compile:\n%v", err)
	}
	return res
}

// compileErrs returns the short form of every error ("line:col: msg").
func compileErrs(t testing.TB, src string) []string {
	t.Helper()
	_, err := Load("t.sluice", files(map[string]string{"t.sluice": src}), testEnv)
	var ds syntax.Diagnostics
	if !errors.As(err, &ds) {
		t.Fatalf("want diagnostics, got %v", err)
	}
	var out []string
	for _, d := range ds {
		out = append(out, strings.TrimPrefix(d.Short(), "t.sluice:"))
	}
	return out
}

func registry() *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", http1.NewServerCodec(), http1.NewClientCodec())
	r.RegisterFilter(rules.Compiler{}, rules.TypeURL)
	return r
}

func loadDSLMD(t testing.TB) *Result {
	t.Helper()
	res, err := Load("testdata/dslmd.sluice", os.ReadFile, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// The whole-file example of DSL.md (without its lua and wasm lines)
// compiles into the expected snapshot, which the engine accepts.
func TestDSLMDSnapshot(t *testing.T) {
	res := loadDSLMD(t)
	snap := res.Snapshot
	if err := server.Check(snap, registry()); err != nil {
		t.Fatalf("engine rejects the snapshot: %v", err)
	}
	if !reflect.DeepEqual(snap.Admin, &config.Admin{Address: "127.0.0.1:9901"}) {
		t.Errorf("admin = %+v", snap.Admin)
	}
	cb := config.DefaultCircuitBreakers()
	wantClusters := []*config.Cluster{
		{Name: "api", Type: "STATIC", ConnectTimeout: time.Second, LBPolicy: config.LBLeastRequest, CircuitBreakers: cb,
			Protocol: "http1", IdleTimeout: time.Hour, Endpoints: []*config.Endpoint{
				{Address: "127.0.0.1:9001", Weight: 1, Healthy: true},
				{Address: "127.0.0.1:9002", Weight: 3, Healthy: true},
			}},
		{Name: "api_v2", Type: "STATIC", ConnectTimeout: 5 * time.Second, LBPolicy: config.LBRoundRobin, CircuitBreakers: cb,
			Protocol: "http1", IdleTimeout: time.Hour, Endpoints: []*config.Endpoint{
				{Address: "127.0.0.1:9003", Weight: 1, Healthy: true},
			}},
	}
	if !reflect.DeepEqual(snap.Clusters, wantClusters) {
		t.Errorf("clusters:\n got %s\nwant %s", dump(snap.Clusters), dump(wantClusters))
	}
	if len(snap.Listeners) != 1 {
		t.Fatalf("%d listeners", len(snap.Listeners))
	}
	l := snap.Listeners[0]
	if l.Name != "public" || l.Address != "127.0.0.1:8080" || len(l.FilterChains) != 1 {
		t.Fatalf("listener = %+v", l)
	}
	hcm := l.FilterChains[0].HTTP
	rc := hcm.RouteConfig
	hcmCopy := *hcm
	hcmCopy.RouteConfig, hcmCopy.HTTPFilters = nil, nil
	wantHCM := config.HTTPConnectionManager{
		StatPrefix: "public", Codec: config.CodecAuto,
		RequestHeadersTimeout: 10 * time.Second, IdleTimeout: time.Hour, StreamIdleTimeout: 5 * time.Minute,
		MaxRequestHeadersBytes: 60 << 10, MaxHeadersCount: 100, UseRemoteAddress: true, GenerateRequestID: true,
	}
	if !reflect.DeepEqual(hcmCopy, wantHCM) {
		t.Errorf("hcm:\n got %+v\nwant %+v", hcmCopy, wantHCM)
	}
	// One rules filter with the two `on` blocks.
	if len(hcm.HTTPFilters) != 1 {
		t.Fatalf("filters = %+v", hcm.HTTPFilters)
	}
	f := hcm.HTTPFilters[0]
	rcfg, ok := f.Config.(*rules.Config)
	if f.Name != "sluice.rules" || f.TypeURL != rules.TypeURL || !ok {
		t.Fatalf("filter = %+v", f)
	}
	if len(rcfg.Request) != 1 || len(rcfg.Response) != 1 {
		t.Fatalf("blocks: %d request, %d response", len(rcfg.Request), len(rcfg.Response))
	}
	if b := rcfg.Request[0]; b.Where != "testdata/dslmd.sluice:19:3" || b.When.Source() != `request.headers["x-debug"] == "1"` ||
		len(b.Actions) != 1 || b.Actions[0].String() != `set request.headers["x-request-id-echo"] = request.id` {
		t.Errorf("on request block = %+v", b)
	}
	if b := rcfg.Response[0]; b.When.Source() != `response.code >= 500` || len(b.Actions) != 1 ||
		!reflect.DeepEqual(b.Actions[0].(*rules.Header).Name, "x-upstream-error") {
		t.Errorf("on response block = %+v", b)
	}

	if rc.Name != "public" || len(rc.VirtualHosts) != 1 || !reflect.DeepEqual(rc.VirtualHosts[0].Domains, []string{"*"}) {
		t.Fatalf("route config = %+v", rc)
	}
	routes := rc.VirtualHosts[0].Routes
	var names []string
	for _, r := range routes {
		names = append(names, r.Name)
	}
	if !reflect.DeepEqual(names, []string{"canary", "api", "blocked", "health", "fallback"}) {
		t.Fatalf("routes = %v", names)
	}
	exact := func(v string) *config.StringMatcher { return &config.StringMatcher{Kind: config.MatchExact, Value: v} }

	canary := routes[0]
	if want := (config.RouteMatch{Prefix: "/api/", Headers: []config.HeaderMatcher{{Name: "x-canary", Match: exact("true")}}}); !reflect.DeepEqual(canary.Match, want) {
		t.Errorf("canary match = %+v", canary.Match)
	}
	if want := (&config.RouteAction{Cluster: "api_v2", Timeout: 2 * time.Second,
		RetryPolicy: &config.RetryPolicy{RetryOn: []string{"5xx", "connect-failure"}, NumRetries: 2}}); !reflect.DeepEqual(canary.Action, want) {
		t.Errorf("canary action = %+v", canary.Action)
	}
	if canary.TypedPerFilterConfig != nil {
		t.Errorf("canary has per-route config")
	}

	api := routes[1]
	if !reflect.DeepEqual(api.Match, config.RouteMatch{Prefix: "/api/"}) {
		t.Errorf("api match = %+v", api.Match)
	}
	if want := (&config.RouteAction{Timeout: 15 * time.Second, WeightedClusters: []*config.WeightedCluster{
		{Name: "api", Weight: 90}, {Name: "api_v2", Weight: 10}}}); !reflect.DeepEqual(api.Action, want) {
		t.Errorf("api action = %s", dump(api.Action))
	}
	o := api.TypedPerFilterConfig["sluice.rules"]
	ra, _ := o.Config.(*rules.RouteActions)
	if o.TypeURL != rules.TypeURL || ra == nil || len(ra.Actions) != 1 || ra.Actions[0].String() != `set request.headers["x-route"] = "api"` {
		t.Errorf("api per-route config = %+v", o)
	}

	blocked := routes[2]
	if c, ok := blocked.Match.Condition.(*rules.Condition); !ok || c.String() != `source.address.startsWith("10.9.")` ||
		blocked.Match.Prefix != "" || len(blocked.Match.Headers) != 0 {
		t.Errorf("blocked match = %+v", blocked.Match)
	}
	if !reflect.DeepEqual(blocked.DirectResponse, &config.DirectResponse{Status: 403, Body: "forbidden\n"}) {
		t.Errorf("blocked = %+v", blocked.DirectResponse)
	}

	health := routes[3]
	if want := (config.RouteMatch{Path: "/healthz", Headers: []config.HeaderMatcher{{Name: ":path", Match: exact("/healthz")}}}); !reflect.DeepEqual(health.Match, want) {
		t.Errorf("health match = %+v", health.Match)
	}
	if !reflect.DeepEqual(health.DirectResponse, &config.DirectResponse{Status: 200, Body: "ok\n"}) {
		t.Errorf("health = %+v", health.DirectResponse)
	}

	// A dynamic body: a placeholder the rules filter pre-empts.
	fallback := routes[4]
	if !reflect.DeepEqual(fallback.Match, config.RouteMatch{}) || !reflect.DeepEqual(fallback.DirectResponse, &config.DirectResponse{Status: 404}) {
		t.Errorf("fallback = %+v %+v", fallback.Match, fallback.DirectResponse)
	}
	ra, _ = fallback.TypedPerFilterConfig["sluice.rules"].Config.(*rules.RouteActions)
	if ra == nil || len(ra.Actions) != 1 {
		t.Fatalf("fallback per-route = %+v", ra)
	}
	if r, ok := ra.Actions[0].(*rules.Respond); !ok || r.Code != 404 || r.Body.Source() != `"no route for " + request.path + "\n"` {
		t.Errorf("fallback action = %+v", ra.Actions[0])
	}

	if len(res.Tests) != 2 || res.Tests[0].Name != "canary users reach v2" || res.Tests[0].Listener != "public" {
		t.Errorf("tests = %s", dump(res.Tests))
	}
	if !reflect.DeepEqual(res.Watch, []string{"testdata/dslmd.sluice"}) {
		t.Errorf("watch = %v", res.Watch)
	}
}

// DSL.md's whole-file example compiles, its lua and wasm lines to
// Envoy's Lua and Wasm filter configs in file order after the rules.
func TestDSLMDLuaWasm(t *testing.T) {
	res, err := Load("../syntax/testdata/dslmd.sluice", os.ReadFile, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, f := range res.Snapshot.Listeners[0].FilterChains[0].HTTP.HTTPFilters {
		types = append(types, f.Name+" "+f.TypeURL)
	}
	want := []string{
		"sluice.rules.0 sluice.rules",
		"sluice.lua.0 " + TypeLua,
		"sluice.wasm.0 " + TypeWasm,
		"sluice.rules sluice.rules",
	}
	if !reflect.DeepEqual(types, want) {
		t.Errorf("filters %q\nwant %q", types, want)
	}
}

func TestCompileErrors(t *testing.T) {
	const up = "upstream api { endpoint 127.0.0.1:9001 }\n"
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"unknown upstream", up + "listener l :8080 {\n  route r { proxy apj }\n}\n",
			[]string{`3:19: unknown upstream "apj"`}},
		{"unknown split and mirror upstream", up + "listener l :8080 {\n  route r { proxy split(api: 1, nope: 2) }\n  route s { proxy api mirror nada }\n}\n",
			[]string{`3:33: unknown upstream "nope"`, `4:30: unknown upstream "nada"`}},
		{"duplicate upstream", up + up, []string{`2:10: duplicate upstream "api" (first declared at t.sluice:1:10)`}},
		{"duplicate listener", "listener l :8080 { route r { deny } }\nlistener l :8081 { route r { deny } }\n",
			[]string{`2:10: duplicate listener "l" (first declared at t.sluice:1:10)`}},
		{"same address", "listener l :8080 { route r { deny } }\nlistener m :8080 { route r { deny } }\n",
			[]string{`2:12: listeners "l" and "m" both use address :8080`}},
		{"duplicate route", "listener l :8080 {\n  route r when request.path == \"/a\" { deny }\n  route r { deny }\n}\n",
			[]string{`3:9: duplicate route "r" in listener "l" (first declared at t.sluice:2:9)`}},
		{"duplicate test", "listener l :8080 { route r { deny } }\ntest \"x\" { request GET \"/\" }\ntest \"x\" { request GET \"/\" }\n",
			[]string{`3:6: duplicate test "x" (first declared at t.sluice:2:6)`}},
		{"when not bool", "listener l :8080 {\n  route r when request.path { deny }\n}\n",
			[]string{"2:16: a `when` condition must be a bool, got string"}},
		{"on when not bool", "listener l :8080 {\n  on request when response.code { deny }\n  route r { deny }\n}\n",
			[]string{"2:19: a `when` condition must be a bool, got int"}},
		{"response attributes before the response", "listener l :8080 {\n  on request when response.code == 200 { deny }\n  route r when response.headers[\"x\"] == \"1\" { deny }\n}\n",
			[]string{"2:19: the condition of an `on request` block is evaluated before there is a response: it cannot read response.code",
				"3:16: a route condition is evaluated before there is a response: it cannot read response.headers"}},
		{"header value not string", "listener l :8080 {\n  route r {\n    set request.headers[\"x\"] = response.code\n    deny\n  }\n}\n",
			[]string{"3:32: a header value must be a string, got int"}},
		{"CEL error inside the expression", "listener l :8080 {\n  route r when request.path.startsWith(1) { deny }\n}\n",
			[]string{"2:39: found no matching overload for 'startsWith' applied to 'string.(int)'"}},
		{"unknown attribute", "listener l :8080 {\n  route r when request.paht == \"/\" { deny }\n}\n",
			[]string{"2:16: unknown attribute request.paht; did you mean request.path?"}},
		{"unreachable after catch-all", "listener l :8080 {\n  route all { deny }\n  route r when request.path == \"/\" { deny }\n  route s { deny }\n}\n",
			[]string{`3:3: route "r" is unreachable: route "all" before it (t.sluice:2:3) has no ` + "`when`" + ` and matches every request`}},
		{"constant true is a catch-all", "listener l :8080 {\n  route all when true { deny }\n  route r { deny }\n}\n",
			[]string{`3:3: route "r" is unreachable: route "all" before it (t.sluice:2:3) has no ` + "`when`" + ` and matches every request`}},
		{"no terminal", "listener l :8080 {\n  route r { set request.headers[\"a\"] = \"b\" }\n}\n",
			[]string{`2:3: route "r" has no terminal action`}},
		{"action after terminal", up + "listener l :8080 {\n  route r {\n    proxy api\n    respond 200\n  }\n}\n",
			[]string{"5:5: `respond` after the terminal action `proxy` (t.sluice:4:5) would never run"}},
		{"action after terminal in on", "listener l :8080 {\n  on request {\n    deny\n    set request.headers[\"a\"] = \"b\"\n  }\n  route r { deny }\n}\n",
			[]string{"4:5: `set` after the terminal action `deny` (t.sluice:3:5) would never run"}},
		{"proxy in on request", up + "listener l :8080 {\n  on request { proxy api }\n  route r { deny }\n}\n",
			[]string{"3:16: `proxy` is only allowed in a route, not in an `on request` block"}},
		{"request action in on response", "listener l :8080 {\n  on response {\n    set request.headers[\"a\"] = \"b\"\n    rewrite path \"/x\"\n  }\n  route r { deny }\n}\n",
			[]string{"3:9: request headers cannot change in an `on response` block: the request was already sent",
				"4:5: `rewrite` is not allowed in an `on response` block: it acts on requests"}},
		{"lua and wasm", "listener l :8080 {\n  lua `print(1)`\n  lua \"missing.lua\"\n  on request {\n    lua `x()`\n  }\n  route r {\n    wasm \"a.wasm\"\n    deny\n  }\n}\n",
			[]string{"3:7: lua file: stat missing.lua: no such file or directory",
				"5:5: a lua filter is a statement of a listener or a route, not an action of an `on` block",
				"8:10: wasm file: stat a.wasm: no such file or directory"}},
		{"health_check", "upstream u {\n  endpoint 10.0.0.1:80\n  health_check http \"/h\" interval 5s\n}\n",
			[]string{"3:3: health_check is not supported yet"}},
		{"listener tls without certificate", "listener l :8443 {\n  tls {\n    alpn \"h2\"\n  }\n  route r { deny }\n}\n",
			[]string{`2:3: the tls block of listener "l" has no certificate`}},
		{"require_client_cert without client_ca", "listener l :8443 {\n  tls {\n    cert \"a.pem\" key \"a.key\"\n    require_client_cert\n  }\n  route r { deny }\n}\n",
			[]string{"4:5: require_client_cert needs client_ca: client certificates are verified against it"}},
		{"tls values", "listener l :8443 {\n  tls {\n    cert \"\" key \"a.key\"\n    alpn \"h2,,http/1.1\"\n    min_version \"TLSv1.3\"\n    max_version \"TLSv1_2\"\n    max_version \"TLSv1_3\"\n  }\n  route r { deny }\n}\n",
			[]string{"3:10: empty certificate file name", `4:10: empty protocol in the list "h2,,http/1.1"`, `5:17: unknown TLS version "TLSv1.3"`,
				`7:5: duplicate max_version in the tls block of listener "l" (first at t.sluice:6:5)`}},
		{"max below min", "listener l :8443 {\n  tls {\n    cert \"a\" key \"b\"\n    min_version \"TLSv1_3\"\n    max_version \"TLSv1_2\"\n  }\n  route r { deny }\n}\n",
			[]string{"5:17: max_version TLSv1_2 is below min_version TLSv1_3"}},
		{"duplicate tls and http2", "listener l :8443 {\n  tls { cert \"a\" key \"b\" }\n  tls { cert \"a\" key \"b\" }\n  http2 {}\n  http2 {}\n  route r { deny }\n}\n",
			[]string{`3:3: duplicate tls in listener "l" (first at t.sluice:2:3)`, `5:3: duplicate http2 in listener "l" (first at t.sluice:4:3)`}},
		{"listener http2 settings with http1", "listener l :8080 {\n  protocol http1\n  http2 { max_concurrent_streams 10 }\n  route r { deny }\n}\n",
			[]string{`3:3: http2 settings have no effect: listener "l" speaks HTTP/1.1`}},
		{"upstream tls", "upstream u {\n  endpoint 10.0.0.1:443\n  tls {\n    cert \"a\" key \"b\"\n    cert \"c\" key \"d\"\n    san \"x\"\n    sni \"\"\n  }\n}\n",
			[]string{`5:5: the tls block of upstream "u" has a client certificate already (at t.sluice:4:5): it takes one`,
				"6:5: san needs ca: without a CA the upstream's certificate is not verified, so its names prove nothing", "7:9: empty sni"}},
		{"protocol auto without tls", "upstream u {\n  endpoint 10.0.0.1:443\n  protocol auto\n}\n",
			[]string{"3:12: protocol auto needs tls: it picks HTTP/2 or HTTP/1.1 by ALPN in the TLS handshake"}},
		{"upstream http2 settings with http1", "upstream u {\n  endpoint 10.0.0.1:443\n  http2 { keepalive 0s }\n  http2 {}\n}\n",
			[]string{`3:3: http2 settings have no effect: upstream "u" speaks HTTP/1.1`, "3:21: the keepalive interval must be greater than 0",
				`4:3: duplicate http2 in upstream "u" (first at t.sluice:3:3)`}},
		{"duplicate http2 setting", "upstream u {\n  endpoint 10.0.0.1:443\n  protocol http2\n  http2 {\n    keepalive 1s\n    keepalive 2s timeout 0s\n  }\n}\n",
			[]string{`6:5: duplicate keepalive in the http2 block of upstream "u" (first at t.sluice:5:5)`}},
		{"hash key", "upstream u {\n  endpoint 10.0.0.1:80\n  lb maglev(request.path)\n}\n",
			[]string{"3:13: this maglev hash key is not supported yet: only a request header or the client address can be hashed"}},
		{"hash key type", "upstream u {\n  endpoint 10.0.0.1:80\n  lb ring_hash(source.port)\n}\n",
			[]string{"3:16: a hash key must be a string, got int"}},
		{"no endpoint", "upstream u { lb random }\n", []string{`1:10: upstream "u" has no endpoint`}},
		{"duplicate lb", "upstream u {\n  endpoint 10.0.0.1:80\n  lb random\n  lb round_robin\n}\n",
			[]string{`4:3: duplicate lb in upstream "u" (first at t.sluice:3:3)`}},
		{"listener host name", "listener l example.com:80 { route r { deny } }\n",
			[]string{`1:12: bad address example.com:80 for listener "l": a host name cannot be bound, expected an IP address`}},
		{"admin host name", "admin admin.local:9901\n",
			[]string{"1:7: bad address admin.local:9901 for the admin server: a host name cannot be bound, expected an IP address"}},
		{"endpoint without host", "upstream u { endpoint :80 }\n", []string{"1:23: endpoint :80 has no host"}},
		{"pseudo header", "listener l :8080 {\n  route r {\n    set request.headers[\":path\"] = \"/x\"\n    remove request.headers[\"content-length\"]\n    deny\n  }\n}\n",
			[]string{"3:25: cannot set the pseudo-header :path", "4:28: cannot remove the header content-length"}},
		{"bad retry_on", up + "listener l :8080 {\n  route r { proxy api retries 2 retry_on \"5xx,conect-failure\" }\n}\n",
			[]string{`3:42: unknown retry condition "conect-failure"`}},
		{"split of zero", up + "upstream b { endpoint 127.0.0.1:2 }\nlistener l :8080 {\n  route r { proxy split(api: 0, b: 0) }\n}\n",
			[]string{"4:13: the weights of a split add up to 0"}},
		{"respond 1xx", "listener l :8080 {\n  route r { respond 101 }\n}\n",
			[]string{"2:21: respond needs a final status code from 200 to 599"}},
		{"rewrite path constant", "listener l :8080 {\n  route r {\n    rewrite path \"x\"\n    deny\n  }\n}\n",
			[]string{`3:18: a rewritten path must start with /, got "x"`}},
		{"test without request", "listener l :8080 { route r { deny } }\ntest \"t\" { expect respond 403 }\n",
			[]string{`2:6: test "t" has no request`}},
		{"test expects unknown names", up + "listener l :8080 { route r { deny } }\ntest \"t\" {\n  request GET \"/\"\n  expect route rr\n  expect upstream apu\n}\n",
			[]string{`6:19: unknown upstream "apu"`, `5:3: listener "l" has no route "rr"`}},
		{"several at once", up + "listener l :8080 {\n  route a when request.path { proxy nope }\n  route b { respond 200 }\n  route c { deny }\n}\n",
			[]string{"3:16: a `when` condition must be a bool, got string", `3:37: unknown upstream "nope"`,
				`5:3: route "c" is unreachable: route "b" before it (t.sluice:4:3) has no ` + "`when`" + ` and matches every request`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compileErrs(t, tc.src)
			// Diagnostics are sorted by position; compare as sets in order.
			want := append([]string(nil), tc.want...)
			sortByPos(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
		})
	}
}

// sortByPos orders "line:col: ..." strings like Diagnostics.Sort.
func sortByPos(s []string) {
	key := func(x string) (int, int) {
		var l, c int
		parts := strings.SplitN(x, ":", 3)
		for _, ch := range parts[0] {
			l = l*10 + int(ch-'0')
		}
		for _, ch := range parts[1] {
			c = c*10 + int(ch-'0')
		}
		return l, c
	}
	for i := 1; i < len(s); i++ {
		for j := i; j > 0; j-- {
			l1, c1 := key(s[j-1])
			l2, c2 := key(s[j])
			if l1 < l2 || l1 == l2 && c1 <= c2 {
				break
			}
			s[j-1], s[j] = s[j], s[j-1]
		}
	}
}

// Syntax errors and compile errors are reported together; compile errors
// inside a block with a syntax error are left out.
func TestLoadMergesSyntaxErrors(t *testing.T) {
	src := "upstream api { endpoint 127.0.0.1:9001 }\n" +
		"listener l :8080 {\n  route a { proxy apx }\n}\n" +
		"listener m :8081 {\n  route b { respond }\n}\n" +
		"listener n :8082 {\n  route c when request.path { deny }\n}\n"
	got := compileErrs(t, src)
	if len(got) != 3 || !strings.HasPrefix(got[0], `3:19: unknown upstream "apx"`) ||
		!strings.HasPrefix(got[1], "6:21: ") || !strings.HasPrefix(got[2], "9:16: a `when` condition must be a bool") {
		t.Errorf("got:\n  %s", strings.Join(got, "\n  "))
	}
}

func TestUpstreams(t *testing.T) {
	res := compileSrc(t, `
upstream a {
  endpoint backend.internal:80
  endpoint [::1]:81 weight 2
  lb ring_hash(request.headers["X-User"])
  protocol http2
  connect_timeout 250ms
}
upstream b {
  endpoint 10.0.0.1:80
  lb maglev(source.address)
}
listener l 127.0.0.1:8080 {
  route ra when request.path.startsWith("/a") { proxy a }
  route rb { proxy b timeout 3s retries 3 mirror a percent 12.5 }
}
`)
	a, b := res.Snapshot.Clusters[0], res.Snapshot.Clusters[1]
	if a.Type != "STRICT_DNS" || a.LBPolicy != config.LBRingHash || a.Protocol != "http2" || a.ConnectTimeout != 250*time.Millisecond ||
		a.Endpoints[1].Address != "[::1]:81" || a.Endpoints[1].Weight != 2 {
		t.Errorf("a = %s", dump(a))
	}
	if b.Type != "STATIC" || b.LBPolicy != config.LBMaglev {
		t.Errorf("b = %s", dump(b))
	}
	routes := res.Snapshot.Listeners[0].FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes
	if hp := routes[0].Action.HashPolicy; !reflect.DeepEqual(hp, []config.HashPolicy{{Header: "x-user"}}) {
		t.Errorf("ra hash = %+v", hp)
	}
	want := &config.RouteAction{Cluster: "b", Timeout: 3 * time.Second, HashPolicy: []config.HashPolicy{{SourceIP: true}},
		RetryPolicy:  &config.RetryPolicy{NumRetries: 3, RetryOn: DefaultRetryOn},
		MirrorPolicy: []config.MirrorPolicy{{Cluster: "a", Percent: 12.5}}}
	if !reflect.DeepEqual(routes[1].Action, want) {
		t.Errorf("rb = %s", dump(routes[1].Action))
	}
	if res.Snapshot.Listeners[0].FilterChains[0].HTTP.HTTPFilters != nil {
		t.Error("a listener without rules has no rules filter")
	}
}

func TestRedirects(t *testing.T) {
	res := compileSrc(t, `
listener l :8080 {
  route a when request.url_path == "/a" { redirect 301 "https://example.com/new?x=1" }
  route b when request.url_path == "/b" { redirect 308 "/elsewhere" }
  route c when request.path == "/c" { redirect 302 "https://example.com" }
  route d when request.path == "/d" { redirect 307 "https://" + request.host + request.path }
  route e { redirect 302 "mailto:x@example.com" }
}
`)
	routes := res.Snapshot.Listeners[0].FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes
	for i, want := range []*config.Redirect{
		{SchemeRedirect: "https", HostRedirect: "example.com", PathRedirect: "/new?x=1", ResponseCode: 301, StripQuery: true},
		{PathRedirect: "/elsewhere", ResponseCode: 308, StripQuery: true},
		{SchemeRedirect: "https", HostRedirect: "example.com", PathRedirect: "/", ResponseCode: 302, StripQuery: true},
		nil, nil,
	} {
		if !reflect.DeepEqual(routes[i].Redirect, want) {
			t.Errorf("route %s: redirect = %+v, want %+v", routes[i].Name, routes[i].Redirect, want)
		}
	}
	// Dynamic or not representable: a placeholder and the filter's reply.
	for _, r := range routes[3:] {
		if r.DirectResponse == nil || r.TypedPerFilterConfig["sluice.rules"] == nil {
			t.Errorf("route %s: %s", r.Name, dump(r))
		}
	}
	for _, tc := range []struct{ path, want string }{
		{"/a?q=2", "https://example.com/new?x=1"},
		{"/b?q=2", "http://h.example/elsewhere"},
		{"/c", "https://example.com/"},
		{"/d", "https://h.example/d"},
		{"/e", "mailto:x@example.com"},
	} {
		ex, err := Explain(res, "", "GET", "http://h.example"+tc.path, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		var loc string
		for _, h := range ex.Outcome.Headers {
			if h.Name == "location" {
				loc = h.Value
			}
		}
		if loc != tc.want {
			t.Errorf("%s: location %q, want %q\n%s", tc.path, loc, tc.want, ex)
		}
	}
}

func dump(v any) string {
	b := new(strings.Builder)
	dumpTo(b, reflect.ValueOf(v), 0)
	return b.String()
}

func dumpTo(b *strings.Builder, v reflect.Value, depth int) {
	if depth > 6 {
		b.WriteString("…")
		return
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			b.WriteString("nil")
			return
		}
		dumpTo(b, v.Elem(), depth+1)
	case reflect.Slice:
		b.WriteString("[")
		for i := 0; i < v.Len(); i++ {
			if i > 0 {
				b.WriteString(" ")
			}
			dumpTo(b, v.Index(i), depth+1)
		}
		b.WriteString("]")
	case reflect.Struct:
		b.WriteString("{")
		for i := 0; i < v.NumField(); i++ {
			if !v.Type().Field(i).IsExported() || v.Field(i).IsZero() {
				continue
			}
			b.WriteString(v.Type().Field(i).Name + ":")
			dumpTo(b, v.Field(i), depth+1)
			b.WriteString(" ")
		}
		b.WriteString("}")
	default:
		fmt.Fprintf(b, "%v", v.Interface())
	}
}

// Imports: names resolve across files, errors point into the imported
// file, and every file is watched.
func TestImports(t *testing.T) {
	fs := files(map[string]string{
		"conf/main.sluice":      "import \"upstreams.sluice\"\nlistener l :8080 {\n  route r { proxy api }\n  route s when request.path == \"/x\" { proxy nope }\n}\n",
		"conf/upstreams.sluice": "upstream api { endpoint 127.0.0.1:1 }\nupstream bad { lb random }\n",
	})
	_, err := Load("conf/main.sluice", fs, testEnv)
	var ds syntax.Diagnostics
	if !errors.As(err, &ds) || len(ds) != 3 {
		t.Fatalf("err = %v", err)
	}
	if got := ds[0].Short() + "\n" + ds[1].Short() + "\n" + ds[2].Short(); got != "conf/main.sluice:4:3: route \"s\" is unreachable: route \"r\" before it (conf/main.sluice:3:3) has no `when` and matches every request\n"+
		"conf/main.sluice:4:45: unknown upstream \"nope\"\n"+
		"conf/upstreams.sluice:2:10: upstream \"bad\" has no endpoint" {
		t.Errorf("got:\n%s", got)
	}
	if w := WatchPaths("conf/main.sluice", fs); !reflect.DeepEqual(w, []string{"conf/main.sluice", "conf/upstreams.sluice"}) {
		t.Errorf("watch of a broken program: %v", w)
	}
	if w := WatchPaths("conf/missing.sluice", fs); !reflect.DeepEqual(w, []string{"conf/missing.sluice"}) {
		t.Errorf("watch of a missing root: %v", w)
	}
	fs = files(map[string]string{
		"conf/main.sluice":      "import \"upstreams.sluice\"\nlistener l :8080 {\n  route r { proxy api }\n}\n",
		"conf/upstreams.sluice": "upstream api { endpoint 127.0.0.1:1 }\n",
	})
	res, err := Load("conf/main.sluice", fs, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Watch, []string{"conf/main.sluice", "conf/upstreams.sluice"}) || !strings.HasPrefix(res.Snapshot.Version, "sluice-") ||
		res.Snapshot.Source != "conf/main.sluice" {
		t.Errorf("watch %v version %q source %q", res.Watch, res.Snapshot.Version, res.Snapshot.Source)
	}
}
