package route

import (
	"errors"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

func TestPathMatchers(t *testing.T) {
	type c struct {
		path string
		want bool
	}
	tests := []struct {
		name  string
		match config.RouteMatch
		cases []c
	}{
		{"prefix", config.RouteMatch{Prefix: "/api"}, []c{
			{"/api", true}, {"/api/x", true}, {"/apix", true}, {"/api?x=1", true},
			{"/API", false}, {"/ap", false}, {"/other?x=/api", false}, {"/", false},
		}},
		{"prefix case-insensitive", config.RouteMatch{Prefix: "/API/v1", CaseInsensitive: true}, []c{
			{"/api/V1/users", true}, {"/Api/v1", true}, {"/api/v2", false},
		}},
		{"exact", config.RouteMatch{Path: "/exact"}, []c{
			{"/exact", true}, {"/exact?q=1", true}, {"/exact#frag", true},
			{"/exact/", false}, {"/EXACT", false}, {"/exac", false},
		}},
		{"exact case-insensitive", config.RouteMatch{Path: "/Exact", CaseInsensitive: true}, []c{
			{"/EXACT", true}, {"/exact?x", true}, {"/exact/", false},
		}},
		{"regex full match", config.RouteMatch{SafeRegex: `/v[0-9]+/.*`}, []c{
			{"/v1/x", true}, {"/v12/", true}, {"/v1/x?q=1", true},
			{"/v1", false}, {"/x/v1/x", false}, {"/V1/x", false},
		}},
		{"regex alternation is anchored as a whole", config.RouteMatch{SafeRegex: `/a|/b`}, []c{
			{"/a", true}, {"/b", true}, {"/ab", false}, {"/a/b", false}, {"x/b", false},
		}},
		// Envoy ignores case_sensitive for safe_regex.
		{"regex ignores case-insensitive", config.RouteMatch{SafeRegex: `/abc`, CaseInsensitive: true}, []c{
			{"/abc", true}, {"/ABC", false},
		}},
		{"regex inline flag", config.RouteMatch{SafeRegex: `(?i)/abc`}, []c{{"/ABC", true}}},
		{"path separated prefix", config.RouteMatch{PathSeparatedPrefix: "/api/dev"}, []c{
			{"/api/dev", true}, {"/api/dev/", true}, {"/api/dev/v1", true}, {"/api/dev?param=true", true},
			{"/api/developer", false}, {"/api/de", false}, {"/API/dev", false},
		}},
		{"path separated prefix case-insensitive", config.RouteMatch{PathSeparatedPrefix: "/api/dev", CaseInsensitive: true}, []c{
			{"/API/Dev/x", true}, {"/API/devx", false},
		}},
		{"no path specifier", config.RouteMatch{}, []c{{"/", true}, {"/anything?x", true}, {"*", true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := oneRoute(t, &config.Route{Name: "r", Match: tt.match, Action: toCluster("c")})
			tb := r.VirtualHost.table
			for _, cs := range tt.cases {
				got := tb.Match(req("h", cs.path)) != nil
				if got != cs.want {
					t.Errorf("path %q: matched=%v, want %v", cs.path, got, cs.want)
				}
			}
		})
	}
}

func TestHeaderMatchers(t *testing.T) {
	sm := func(k config.StringMatchKind, v string, ic bool) *config.StringMatcher {
		return &config.StringMatcher{Kind: k, Value: v, IgnoreCase: ic}
	}
	tests := []struct {
		name    string
		matcher config.HeaderMatcher
		headers []string
		want    bool
	}{
		{"exact", config.HeaderMatcher{Name: ":method", Match: sm(config.MatchExact, "GET", false)}, nil, true},
		{"exact other", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "v", false)}, []string{"x-a", "V"}, false},
		{"exact ignore case", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "v", true)}, []string{"x-a", "V"}, true},
		{"exact empty value", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "", false)}, []string{"x-a", ""}, true},
		{"exact empty value vs non-empty", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "", false)}, []string{"x-a", "v"}, false},
		{"name case-insensitive", config.HeaderMatcher{Name: "X-Foo", Match: sm(config.MatchExact, "1", false)}, []string{"x-foo", "1"}, true},
		{"prefix", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchPrefix, "ab", false)}, []string{"x-a", "abc"}, true},
		{"prefix miss", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchPrefix, "ab", false)}, []string{"x-a", "ABc"}, false},
		{"prefix ignore case", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchPrefix, "ab", true)}, []string{"x-a", "ABc"}, true},
		{"suffix", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchSuffix, "bc", false)}, []string{"x-a", "abc"}, true},
		{"suffix ignore case", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchSuffix, "BC", true)}, []string{"x-a", "abc"}, true},
		{"suffix too long", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchSuffix, "xabc", true)}, []string{"x-a", "abc"}, false},
		{"contains", config.HeaderMatcher{Name: "user-agent", Match: sm(config.MatchContains, "Mobile", false)}, []string{"user-agent", "Foo Mobile Bar"}, true},
		{"contains miss", config.HeaderMatcher{Name: "user-agent", Match: sm(config.MatchContains, "Mobile", false)}, []string{"user-agent", "foo mobile"}, false},
		{"contains ignore case", config.HeaderMatcher{Name: "user-agent", Match: sm(config.MatchContains, "MoBiLe", true)}, []string{"user-agent", "foo mOBILE"}, true},
		{"regex full match", config.HeaderMatcher{Name: "x-v", Match: sm(config.MatchRegex, `v\d+`, false)}, []string{"x-v", "v12"}, true},
		{"regex partial is no match", config.HeaderMatcher{Name: "x-v", Match: sm(config.MatchRegex, `v\d+`, false)}, []string{"x-v", "av12"}, false},
		{"regex ignores ignore case", config.HeaderMatcher{Name: "x-v", Match: sm(config.MatchRegex, `v\d+`, true)}, []string{"x-v", "V12"}, false},
		{"multiple values joined", config.HeaderMatcher{Name: "x-m", Match: sm(config.MatchExact, "1,2", false)}, []string{"x-m", "1", "X-M", "2"}, true},
		{"multiple values not first only", config.HeaderMatcher{Name: "x-m", Match: sm(config.MatchExact, "1", false)}, []string{"x-m", "1", "x-m", "2"}, false},
		{"pseudo authority", config.HeaderMatcher{Name: ":authority", Match: sm(config.MatchSuffix, ".com", false)}, nil, true},
		{"pseudo path includes query", config.HeaderMatcher{Name: ":path", Match: sm(config.MatchContains, "q=1", false)}, nil, true},
		// Missing headers fail value matchers whatever invert says (Envoy).
		{"missing", config.HeaderMatcher{Name: "x-none", Match: sm(config.MatchExact, "v", false)}, nil, false},
		{"missing inverted", config.HeaderMatcher{Name: "x-none", Match: sm(config.MatchExact, "v", false), InvertMatch: true}, nil, false},
		{"inverted other value", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "v", false), InvertMatch: true}, []string{"x-a", "w"}, true},
		{"inverted same value", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchExact, "v", false), InvertMatch: true}, []string{"x-a", "v"}, false},
		{"inverted regex", config.HeaderMatcher{Name: "x-a", Match: sm(config.MatchRegex, "a+", false), InvertMatch: true}, []string{"x-a", "b"}, true},
		// Presence.
		{"present", config.HeaderMatcher{Name: "x-p", Present: true}, []string{"x-p", ""}, true},
		{"present missing", config.HeaderMatcher{Name: "x-p", Present: true}, nil, false},
		{"present inverted, present", config.HeaderMatcher{Name: "x-p", Present: true, InvertMatch: true}, []string{"x-p", "1"}, false},
		{"present inverted, missing", config.HeaderMatcher{Name: "x-p", Present: true, InvertMatch: true}, nil, true},
		{"absent, missing", config.HeaderMatcher{Name: "x-p", Present: false}, nil, true},
		{"absent, present", config.HeaderMatcher{Name: "x-p", Present: false}, []string{"x-p", "1"}, false},
		{"absent inverted, missing", config.HeaderMatcher{Name: "x-p", Present: false, InvertMatch: true}, nil, false},
		{"absent inverted, present", config.HeaderMatcher{Name: "x-p", Present: false, InvertMatch: true}, []string{"x-p", "1"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := oneRoute(t, &config.Route{Match: config.RouteMatch{Prefix: "/", Headers: []config.HeaderMatcher{tt.matcher}}, Action: toCluster("c")})
			got := r.VirtualHost.table.Match(req("example.com", "/p?q=1", tt.headers...)) != nil
			if got != tt.want {
				t.Fatalf("matched=%v, want %v", got, tt.want)
			}
		})
	}
}

func TestHeaderMatchersAllMustMatch(t *testing.T) {
	r := oneRoute(t, &config.Route{Match: config.RouteMatch{Prefix: "/", Headers: []config.HeaderMatcher{
		{Name: "x-a", Present: true},
		{Name: "x-b", Match: &config.StringMatcher{Kind: config.MatchExact, Value: "1"}},
	}}, Action: toCluster("c")})
	tb := r.VirtualHost.table
	if tb.Match(req("h", "/", "x-a", "", "x-b", "1")) == nil {
		t.Fatal("both matching: no match")
	}
	if tb.Match(req("h", "/", "x-b", "1")) != nil {
		t.Fatal("one missing: matched")
	}
}

func TestQueryParameterMatchers(t *testing.T) {
	q := func(name string, m *config.StringMatcher) config.QueryParameterMatcher {
		return config.QueryParameterMatcher{Name: name, Match: m}
	}
	exact := func(v string, ic bool) *config.StringMatcher {
		return &config.StringMatcher{Kind: config.MatchExact, Value: v, IgnoreCase: ic}
	}
	tests := []struct {
		name    string
		matcher config.QueryParameterMatcher
		path    string
		want    bool
	}{
		{"present", q("debug", nil), "/p?debug", true},
		{"present with value", q("debug", nil), "/p?a=1&debug=0", true},
		{"present missing", q("debug", nil), "/p?a=1", false},
		{"present no query", q("debug", nil), "/p", false},
		{"name is exact", q("debug", nil), "/p?debugx=1&Debug=1", false},
		{"exact", q("v", exact("2", false)), "/p?a=1&v=2", true},
		{"exact first value wins", q("v", exact("2", false)), "/p?v=1&v=2", false},
		{"exact first value", q("v", exact("1", false)), "/p?v=1&v=2", true},
		{"exact ignore case", q("v", exact("abc", true)), "/p?v=ABC", true},
		{"no '=' is empty value", q("v", exact("", false)), "/p?v&w=1", true},
		{"empty value", q("v", exact("", false)), "/p?v=", true},
		{"value keeps '='", q("v", exact("a=b", false)), "/p?v=a=b", true},
		// As Envoy's route matcher: values are not percent-decoded.
		{"raw value", q("v", exact("a%20b", false)), "/p?v=a%20b", true},
		{"not decoded", q("v", exact("a b", false)), "/p?v=a%20b", false},
		{"fragment excluded", q("v", exact("1", false)), "/p?v=1#frag", true},
		{"regex", q("id", &config.StringMatcher{Kind: config.MatchRegex, Value: `[0-9]+`}), "/p?id=123", true},
		{"regex full", q("id", &config.StringMatcher{Kind: config.MatchRegex, Value: `[0-9]+`}), "/p?id=123a", false},
		{"prefix", q("id", &config.StringMatcher{Kind: config.MatchPrefix, Value: "ab"}), "/p?x&id=abc&", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := oneRoute(t, &config.Route{Match: config.RouteMatch{Prefix: "/", QueryParameters: []config.QueryParameterMatcher{tt.matcher}}, Action: toCluster("c")})
			got := r.VirtualHost.table.Match(req("h", tt.path)) != nil
			if got != tt.want {
				t.Fatalf("matched=%v, want %v", got, tt.want)
			}
		})
	}
}

func TestFirstMatchWins(t *testing.T) {
	rc := &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*config.Route{
			{Name: "canary", Match: config.RouteMatch{Prefix: "/a", Headers: []config.HeaderMatcher{{Name: "x-canary", Present: true}}}, Action: toCluster("canary")},
			{Name: "ab", Match: config.RouteMatch{Prefix: "/a/b"}, Action: toCluster("ab")},
			{Name: "a", Match: config.RouteMatch{Prefix: "/a"}, Action: toCluster("a")},
			{Name: "a-shadowed", Match: config.RouteMatch{Path: "/a/x"}, Action: toCluster("never")},
			{Name: "root", Match: config.RouteMatch{Prefix: "/"}, Action: toCluster("root")},
		},
	}}}
	tb := mustCompile(t, rc)
	tests := []struct {
		path    string
		headers []string
		want    string
		index   int
	}{
		{"/a/b/c", nil, "ab", 1},
		{"/a/b/c", []string{"x-canary", "1"}, "canary", 0},
		{"/a/x", nil, "a", 2},
		{"/z", nil, "root", 4},
	}
	for _, tt := range tests {
		r := tb.Match(req("h", tt.path, tt.headers...))
		if r == nil || r.Name() != tt.want || r.Index != tt.index {
			t.Errorf("%s %v: got %v, want %s (#%d)", tt.path, tt.headers, r, tt.want, tt.index)
		}
	}
	// VirtualHost.Match works on its own too.
	if r := tb.VirtualHosts()[0].Match(req("h", "/a/b")); r == nil || r.Name() != "ab" {
		t.Errorf("VirtualHost.Match: got %v", r)
	}
	if tb.Config() != rc {
		t.Error("Config() is not the compiled configuration")
	}
}

func TestRouteErrors(t *testing.T) {
	ok := toCluster("c")
	tests := []struct {
		name  string
		route *config.Route
		want  string
	}{
		{"bad regex", &config.Route{Name: "r1", Match: config.RouteMatch{SafeRegex: "(["}, Action: ok},
			`route: virtual host "vh": route 1 ("r1"): bad regex "(["`},
		{"unnamed", &config.Route{Match: config.RouteMatch{SafeRegex: "(["}, Action: ok},
			`route: virtual host "vh": route 1: bad regex`},
		{"regex closing the anchor group", &config.Route{Match: config.RouteMatch{SafeRegex: "a)|(b"}, Action: ok}, "bad regex"},
		{"two path specifiers", &config.Route{Match: config.RouteMatch{Prefix: "/", Path: "/a"}, Action: ok}, "more than one path specifier"},
		{"path separated trailing slash", &config.Route{Match: config.RouteMatch{PathSeparatedPrefix: "/api/"}, Action: ok}, "bad path_separated_prefix"},
		{"path separated query", &config.Route{Match: config.RouteMatch{PathSeparatedPrefix: "/a?b"}, Action: ok}, "bad path_separated_prefix"},
		{"no action", &config.Route{}, "exactly one of action, direct response and redirect"},
		{"two actions", &config.Route{Action: ok, DirectResponse: &config.DirectResponse{Status: 200}}, "exactly one of action"},
		{"no cluster", &config.Route{Action: &config.RouteAction{}}, "exactly one of cluster, weighted clusters and cluster header"},
		{"two clusters", &config.Route{Action: &config.RouteAction{Cluster: "a", ClusterHeader: "x"}}, "exactly one of cluster"},
		{"zero weights", &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{{Name: "a"}, {Name: "b"}}}}, "greater than 0"},
		{"weights overflow", &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{{Name: "a", Weight: 1 << 31}, {Name: "b", Weight: 1 << 31}}}}, "exceeds"},
		{"weighted without name", &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{{Weight: 1}}}}, "weighted cluster 0: empty name"},
		{"bad weighted mutation", &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{{Name: "a", Weight: 1, HeaderMutations: config.HeaderMutations{RequestHeadersToRemove: []string{":path"}}}}}}, `weighted cluster 0 ("a"): request headers: header ":path"`},
		{"two rewrites", &config.Route{Action: &config.RouteAction{Cluster: "a", PrefixRewrite: "/", RegexRewrite: &config.RegexRewrite{Pattern: "a"}}}, "only one of prefix_rewrite and regex_rewrite"},
		{"bad rewrite regex", &config.Route{Action: &config.RouteAction{Cluster: "a", RegexRewrite: &config.RegexRewrite{Pattern: "("}}}, "bad regex_rewrite pattern"},
		{"rewrite group out of range", &config.Route{Action: &config.RouteAction{Cluster: "a", RegexRewrite: &config.RegexRewrite{Pattern: "(a)", Substitution: `\2`}}}, "bad regex_rewrite substitution"},
		{"rewrite bad escape", &config.Route{Action: &config.RouteAction{Cluster: "a", RegexRewrite: &config.RegexRewrite{Pattern: "a", Substitution: `\n`}}}, "invalid escape"},
		{"rewrite trailing backslash", &config.Route{Action: &config.RouteAction{Cluster: "a", RegexRewrite: &config.RegexRewrite{Pattern: "a", Substitution: `x\`}}}, "trailing backslash"},
		{"two host rewrites", &config.Route{Action: &config.RouteAction{Cluster: "a", HostRewriteLiteral: "h", AutoHostRewrite: true}}, "only one of host_rewrite_literal"},
		{"host rewrite CRLF", &config.Route{Action: &config.RouteAction{Cluster: "a", HostRewriteLiteral: "h\r\nx: y"}}, "bad host_rewrite_literal"},
		{"hash policy two kinds", &config.Route{Action: &config.RouteAction{Cluster: "a", HashPolicy: []config.HashPolicy{{Header: "x", Cookie: "y"}}}}, "hash policy 0: set only one"},
		{"redirect path and prefix", &config.Route{Redirect: &config.Redirect{PathRedirect: "/a", PrefixRewrite: "/b"}}, "only one of path_redirect and prefix_rewrite"},
		{"redirect code", &config.Route{Redirect: &config.Redirect{ResponseCode: 200}}, "response code 200"},
		{"redirect port", &config.Route{Redirect: &config.Redirect{PortRedirect: 70000}}, "port 70000"},
		{"redirect CRLF", &config.Route{Redirect: &config.Redirect{HostRedirect: "a\nb"}}, "invalid character"},
		{"direct response status", &config.Route{DirectResponse: &config.DirectResponse{Status: 100}}, "direct response status 100"},
		{"header matcher name", &config.Route{Match: config.RouteMatch{Headers: []config.HeaderMatcher{{Present: true}}}, Action: ok}, "header matcher 0: empty header name"},
		{"header matcher regex", &config.Route{Match: config.RouteMatch{Headers: []config.HeaderMatcher{{Name: "x", Match: &config.StringMatcher{Kind: config.MatchRegex, Value: "*"}}}}, Action: ok}, `header matcher 0: "x": bad regex`},
		{"header matcher kind", &config.Route{Match: config.RouteMatch{Headers: []config.HeaderMatcher{{Name: "x", Match: &config.StringMatcher{Kind: 99}}}}, Action: ok}, "unknown string match kind"},
		{"query matcher name", &config.Route{Match: config.RouteMatch{QueryParameters: []config.QueryParameterMatcher{{}}}, Action: ok}, "query parameter matcher 0: empty name"},
		{"query matcher regex", &config.Route{Match: config.RouteMatch{QueryParameters: []config.QueryParameterMatcher{{Name: "q", Match: &config.StringMatcher{Kind: config.MatchRegex, Value: "("}}}}, Action: ok}, `query parameter matcher 0 ("q"): bad regex`},
		{"mutation host", &config.Route{Action: ok, HeaderMutations: config.HeaderMutations{RequestHeadersToAdd: []config.HeaderValueOption{{Key: "Host", Value: "x"}}}}, `request headers: header "Host": pseudo-headers and host may not be modified`},
		{"mutation pseudo", &config.Route{Action: ok, HeaderMutations: config.HeaderMutations{ResponseHeadersToRemove: []string{":status"}}}, `response headers: header ":status"`},
		{"mutation bad name", &config.Route{Action: ok, HeaderMutations: config.HeaderMutations{RequestHeadersToAdd: []config.HeaderValueOption{{Key: "a b", Value: "x"}}}}, `invalid header name "a b"`},
		{"mutation bad value", &config.Route{Action: ok, HeaderMutations: config.HeaderMutations{RequestHeadersToAdd: []config.HeaderValueOption{{Key: "a", Value: "x\r\ny: z"}}}}, `invalid value for header "a"`},
		{"mutation bad action", &config.Route{Action: ok, HeaderMutations: config.HeaderMutations{RequestHeadersToAdd: []config.HeaderValueOption{{Key: "a", Value: "x", Action: 9}}}}, "unknown append action 9"},
		{"nil route", nil, "nil route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{
				Name: "vh", Domains: []string{"*"},
				Routes: []*config.Route{{Name: "r0", Action: ok}, tt.route},
			}}}
			_, err := Compile(rc)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLevelMutationErrors(t *testing.T) {
	bad := config.HeaderMutations{RequestHeadersToRemove: []string{"host"}}
	_, err := Compile(&config.RouteConfiguration{Name: "rc", HeaderMutations: bad})
	if err == nil || !strings.Contains(err.Error(), `route: route configuration "rc": request headers`) {
		t.Errorf("table level: %v", err)
	}
	_, err = Compile(&config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"}, HeaderMutations: bad}}})
	if err == nil || !strings.Contains(err.Error(), `route: virtual host "vh": request headers`) {
		t.Errorf("virtual host level: %v", err)
	}
}

// TestQuickCheckAgreesWithFullMatch checks that the per-route pre-check
// never rejects a route the full match accepts.
func TestQuickCheckAgreesWithFullMatch(t *testing.T) {
	var routes []*config.Route
	for _, m := range []config.RouteMatch{
		{Prefix: "/"}, {Prefix: "/a"}, {Prefix: "/abcdefgh"}, {Prefix: "/abcdefghij"}, {Prefix: "/ABC", CaseInsensitive: true},
		{Path: "/a"}, {Path: "/abcdefgh"}, {Path: "/abcdefghi"}, {Path: "/A", CaseInsensitive: true},
		{PathSeparatedPrefix: "/ab"}, {PathSeparatedPrefix: "/abcdefgh"},
		{SafeRegex: "/a.*"}, {SafeRegex: "/abcdefghi[0-9]"}, {SafeRegex: "(?i)/ab"}, {SafeRegex: "/a|/b"}, {SafeRegex: ".*"},
		{},
	} {
		routes = append(routes, &config.Route{Match: m, Action: toCluster("c")})
	}
	tb := mustCompile(t, &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: routes}}})
	vh := tb.vhosts[0]
	paths := []string{"", "/", "/a", "/A", "/ab", "/ab/", "/abc", "/ABC", "/abcdefg", "/abcdefgh", "/abcdefgh/",
		"/abcdefghi", "/abcdefghi1", "/abcdefghij", "/b", "/x", "/a?q", "/abcdefgh?x", "a"}
	for _, p := range paths {
		for i, r := range vh.Routes {
			// Single-route virtual host view: the i-th pre-check, then the full match.
			one := &VirtualHost{Routes: []*Route{r}, quick: vh.quick[i : i+1]}
			m, _ := one.match(req("h", p), p, nil)
			got := m != nil
			want := r.matches(req("h", p), p, pathOnly(p))
			if got != want {
				t.Errorf("route %d %+v, path %q: with pre-check %v, full match %v", i, r.Config.Match, p, got, want)
			}
		}
	}
}

// condFunc adapts a function to config.Condition.
type condFunc func(attr.Source) (bool, error)

func (f condFunc) Eval(s attr.Source) (bool, error) { return f(s) }

type fakeSource struct {
	attr.Source
	h *header.Map
}

func (f fakeSource) RequestHeaders() *header.Map { return f.h }

func TestConditionRoutes(t *testing.T) {
	boom := errors.New("boom")
	rc := &config.RouteConfiguration{Name: "t", VirtualHosts: []*config.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*config.Route{
		{Name: "canary", Match: config.RouteMatch{Prefix: "/api/", Condition: condFunc(func(s attr.Source) (bool, error) {
			return s.RequestHeaders().Value("x-canary") == "true", nil
		})}, Action: &config.RouteAction{Cluster: "v2"}},
		{Name: "broken", Match: config.RouteMatch{Prefix: "/broken", Condition: condFunc(func(attr.Source) (bool, error) { return false, boom })}, Action: &config.RouteAction{Cluster: "x"}},
		{Name: "api", Match: config.RouteMatch{Prefix: "/"}, Action: &config.RouteAction{Cluster: "v1"}},
	}}}}
	tb, err := Compile(rc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, canary, want string
		err                error
	}{
		{"/api/x", "true", "canary", nil},
		{"/api/x", "", "api", nil},
		{"/other", "true", "api", nil},
		{"/broken", "", "", boom},
	} {
		h := req("h", tc.path)
		if tc.canary != "" {
			h.Add("x-canary", tc.canary)
		}
		r, err := tb.MatchSource(fakeSource{h: h})
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.path, err, tc.err)
			continue
		}
		name := ""
		if r != nil {
			name = r.Name()
		}
		if name != tc.want {
			t.Errorf("%s canary=%q: got route %q, want %q", tc.path, tc.canary, name, tc.want)
		}
	}
	// Without a source, condition routes never match.
	h := req("h", "/api/x")
	h.Add("x-canary", "true")
	if r := tb.Match(h); r == nil || r.Name() != "api" {
		t.Errorf("Match without source picked %v", r)
	}
}
