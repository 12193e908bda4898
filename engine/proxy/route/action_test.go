package route

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

func TestPickCluster(t *testing.T) {
	r := oneRoute(t, &config.Route{Action: toCluster("plain")})
	if name, wc := r.PickCluster(12345); name != "plain" || wc != nil {
		t.Fatalf("cluster: got %q %v", name, wc)
	}
	if name, _ := r.ClusterFor(req("h", "/"), 1); name != "plain" {
		t.Fatalf("ClusterFor cluster: got %q", name)
	}

	hr := oneRoute(t, &config.Route{Action: &config.RouteAction{ClusterHeader: "x-cluster"}})
	if name, wc := hr.PickCluster(1); name != "" || wc != nil {
		t.Fatalf("PickCluster on cluster_header route: got %q", name)
	}
	if name, _ := hr.ClusterFor(req("h", "/", "X-Cluster", "backend", "x-cluster", "other"), 1); name != "backend" {
		t.Fatalf("cluster header: got %q, want first value", name)
	}
	if name, _ := hr.ClusterFor(req("h", "/"), 1); name != "" {
		t.Fatalf("missing cluster header: got %q", name)
	}

	rd := oneRoute(t, &config.Route{Redirect: &config.Redirect{}})
	if name, _ := rd.ClusterFor(req("h", "/"), 1); name != "" {
		t.Fatalf("redirect route: got %q", name)
	}
}

func TestWeightedClusters(t *testing.T) {
	a := &config.WeightedCluster{Name: "a", Weight: 10}
	b := &config.WeightedCluster{Name: "b", Weight: 0}
	c := &config.WeightedCluster{Name: "c", Weight: 30}
	d := &config.WeightedCluster{Name: "d", Weight: 60}
	r := oneRoute(t, &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{a, b, c, d}}})

	// Interval boundaries: [0,10) a, [10,40) c, [40,100) d; b never.
	for _, tt := range []struct {
		rnd  uint32
		want *config.WeightedCluster
	}{
		{0, a}, {9, a}, {10, c}, {39, c}, {40, d}, {99, d}, {100, a}, {109, a}, {110, c},
		{math.MaxUint32, pickByMod(math.MaxUint32, a, c, d)},
	} {
		name, wc := r.PickCluster(tt.rnd)
		if wc != tt.want || name != tt.want.Name {
			t.Errorf("rnd %d: got %s, want %s", tt.rnd, name, tt.want.Name)
		}
	}

	// Over the rnd space, picks are exactly proportional to the weights.
	counts := map[string]int{}
	for rnd := uint32(0); rnd < 100*1000; rnd++ {
		name, _ := r.PickCluster(rnd)
		counts[name]++
	}
	if counts["a"] != 10000 || counts["b"] != 0 || counts["c"] != 30000 || counts["d"] != 60000 {
		t.Errorf("distribution: %v", counts)
	}
	// And closely so for random numbers from the whole uint32 range.
	counts = map[string]int{}
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 1 << 20
	for i := 0; i < n; i++ {
		name, _ := r.PickCluster(rng.Uint32())
		counts[name]++
	}
	for name, want := range map[string]float64{"a": 0.1, "c": 0.3, "d": 0.6} {
		if got := float64(counts[name]) / n; math.Abs(got-want) > 0.01 {
			t.Errorf("cluster %s: share %.3f, want %.2f", name, got, want)
		}
	}

	single := oneRoute(t, &config.Route{Action: &config.RouteAction{WeightedClusters: []*config.WeightedCluster{{Name: "only", Weight: 1}}}})
	for _, rnd := range []uint32{0, 1, 7, math.MaxUint32} {
		if name, _ := single.PickCluster(rnd); name != "only" {
			t.Fatalf("single: got %q", name)
		}
	}
}

func pickByMod(rnd uint32, a, c, d *config.WeightedCluster) *config.WeightedCluster {
	switch v := rnd % 100; {
	case v < 10:
		return a
	case v < 40:
		return c
	}
	return d
}

func TestRewritePath(t *testing.T) {
	tests := []struct {
		name   string
		match  config.RouteMatch
		action config.RouteAction
		in     string
		want   string
	}{
		{"prefix", config.RouteMatch{Prefix: "/api"}, config.RouteAction{PrefixRewrite: "/v2"}, "/api/users?x=1", "/v2/users?x=1"},
		{"prefix whole", config.RouteMatch{Prefix: "/api"}, config.RouteAction{PrefixRewrite: "/v2"}, "/api", "/v2"},
		{"prefix to root", config.RouteMatch{Prefix: "/api/"}, config.RouteAction{PrefixRewrite: "/"}, "/api/users", "/users"},
		{"prefix slash pitfall", config.RouteMatch{Prefix: "/api"}, config.RouteAction{PrefixRewrite: "/"}, "/api/users", "//users"},
		{"prefix case-insensitive", config.RouteMatch{Prefix: "/API", CaseInsensitive: true}, config.RouteAction{PrefixRewrite: "/x"}, "/api/y?z", "/x/y?z"},
		{"exact keeps query", config.RouteMatch{Path: "/old"}, config.RouteAction{PrefixRewrite: "/new"}, "/old?q=1", "/new?q=1"},
		{"path separated", config.RouteMatch{PathSeparatedPrefix: "/api"}, config.RouteAction{PrefixRewrite: "/b"}, "/api/c?d", "/b/c?d"},
		{"regex route replaces the path", config.RouteMatch{SafeRegex: "/v[0-9]+/.*"}, config.RouteAction{PrefixRewrite: "/x"}, "/v1/a?q=1", "/x?q=1"},
		{"no specifier prepends", config.RouteMatch{}, config.RouteAction{PrefixRewrite: "/pre"}, "/a?b", "/pre/a?b"},
		{"mismatch unchanged", config.RouteMatch{Prefix: "/api"}, config.RouteAction{PrefixRewrite: "/v2"}, "/other", "/other"},
		// Envoy's documented regex_rewrite examples.
		{"regex rewrite groups", config.RouteMatch{Prefix: "/"}, config.RouteAction{RegexRewrite: &config.RegexRewrite{Pattern: `^/service/([^/]+)(/.*)$`, Substitution: `\2/instance/\1`}},
			"/service/foo/v1/api?x=1", "/v1/api/instance/foo?x=1"},
		{"regex rewrite all", config.RouteMatch{Prefix: "/"}, config.RouteAction{RegexRewrite: &config.RegexRewrite{Pattern: "one", Substitution: "two"}},
			"/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz"},
		{"regex rewrite query untouched", config.RouteMatch{Prefix: "/"}, config.RouteAction{RegexRewrite: &config.RegexRewrite{Pattern: "a", Substitution: "b"}},
			"/aa?a=a", "/bb?a=a"},
		{"regex rewrite whole path", config.RouteMatch{Prefix: "/"}, config.RouteAction{RegexRewrite: &config.RegexRewrite{Pattern: "^.*$", Substitution: "/fixed"}},
			"/any/thing?k=v", "/fixed?k=v"},
		{"regex rewrite literal dollar and backslash", config.RouteMatch{Prefix: "/"}, config.RouteAction{RegexRewrite: &config.RegexRewrite{Pattern: "/(x)", Substitution: `/$1\\\1\0`}},
			"/x", `/$1\x/x`},
		{"no rewrite", config.RouteMatch{Prefix: "/"}, config.RouteAction{}, "/a?b", "/a?b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.action
			a.Cluster = "c"
			r := oneRoute(t, &config.Route{Match: tt.match, Action: &a})
			if got := r.RewritePath(tt.in); got != tt.want {
				t.Fatalf("RewritePath(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRewriteHost(t *testing.T) {
	lit := oneRoute(t, &config.Route{Action: &config.RouteAction{Cluster: "c", HostRewriteLiteral: "upstream.internal"}})
	h := req("example.com", "/")
	lit.RewriteHost(h)
	if got := h.Value(":authority"); got != "upstream.internal" {
		t.Fatalf("literal: :authority = %q", got)
	}

	// A Host field kept by the codec follows :authority.
	h = req("example.com", "/", "host", "example.com")
	lit.RewriteHost(h)
	if h.Value("host") != "upstream.internal" || h.Count(":authority") != 1 {
		t.Fatalf("literal with host field: %v", fields(h))
	}

	hdr := oneRoute(t, &config.Route{Action: &config.RouteAction{Cluster: "c", HostRewriteHeader: "x-host"}})
	h = req("example.com", "/", "x-host", "from-header", "x-host", "second")
	hdr.RewriteHost(h)
	if got := h.Value(":authority"); got != "from-header" {
		t.Fatalf("header: :authority = %q", got)
	}
	for _, extra := range [][]string{nil, {"x-host", ""}} {
		h = req("example.com", "/", extra...)
		hdr.RewriteHost(h)
		if got := h.Value(":authority"); got != "example.com" {
			t.Fatalf("missing/empty header %v: :authority = %q", extra, got)
		}
	}

	auto := oneRoute(t, &config.Route{Action: &config.RouteAction{Cluster: "c", AutoHostRewrite: true}})
	if !auto.AutoHostRewrite() || lit.AutoHostRewrite() {
		t.Fatal("AutoHostRewrite")
	}
	h = req("example.com", "/")
	auto.RewriteHost(h)
	if got := h.Value(":authority"); got != "example.com" {
		t.Fatalf("auto: RewriteHost changed :authority to %q", got)
	}
}

func TestRedirectLocation(t *testing.T) {
	tests := []struct {
		name     string
		match    config.RouteMatch
		redirect config.Redirect
		req      []string // authority, path, then header pairs
		code     int
		want     string
	}{
		{"https", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com", "/a?b=1"}, 301, "https://example.com/a?b=1"},
		{"https drops :80", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com:80", "/a", "x-forwarded-proto", "http"}, 301, "https://example.com/a"},
		{"https drops :80 using :scheme without xfp", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com:80", "/a"}, 301, "https://example.com/a"},
		{"https keeps other port", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com:8080", "/a"}, 301, "https://example.com:8080/a"},
		{"https keeps :443 from http", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com:443", "/a"}, 301, "https://example.com:443/a"},
		{"same scheme keeps port", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https", PathRedirect: "/b"},
			[]string{"example.com:443", "/a", "x-forwarded-proto", "https"}, 301, "https://example.com:443/b"},
		{"http drops :443", config.RouteMatch{}, config.Redirect{SchemeRedirect: "http"},
			[]string{"example.com:443", "/a", "x-forwarded-proto", "https"}, 301, "http://example.com/a"},
		{"xfp wins over :scheme", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"example.com:80", "/a", "x-forwarded-proto", "https"}, 301, "https://example.com:80/a"},
		{"ipv6 drops :80", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"[::1]:80", "/a"}, 301, "https://[::1]/a"},
		{"ipv6 without port", config.RouteMatch{}, config.Redirect{SchemeRedirect: "https"},
			[]string{"[::1]", "/a"}, 301, "https://[::1]/a"},
		{"host", config.RouteMatch{}, config.Redirect{HostRedirect: "new.com"},
			[]string{"example.com:8080", "/a?b=1"}, 301, "http://new.com/a?b=1"},
		{"port replaces request port", config.RouteMatch{}, config.Redirect{PortRedirect: 8443},
			[]string{"example.com:9000", "/a"}, 301, "http://example.com:8443/a"},
		{"host and port", config.RouteMatch{}, config.Redirect{HostRedirect: "new.com", PortRedirect: 8443, SchemeRedirect: "https"},
			[]string{"example.com", "/a"}, 301, "https://new.com:8443/a"},
		{"path keeps query", config.RouteMatch{}, config.Redirect{PathRedirect: "/new"},
			[]string{"example.com", "/old?x=1"}, 301, "http://example.com/new?x=1"},
		{"path strip query", config.RouteMatch{}, config.Redirect{PathRedirect: "/new", StripQuery: true},
			[]string{"example.com", "/old?x=1"}, 301, "http://example.com/new"},
		{"path with own query wins and stays", config.RouteMatch{}, config.Redirect{PathRedirect: "/new?y=2", StripQuery: true},
			[]string{"example.com", "/old?x=1"}, 301, "http://example.com/new?y=2"},
		{"path without slash", config.RouteMatch{}, config.Redirect{PathRedirect: "new"},
			[]string{"example.com", "/old"}, 301, "http://example.com/new"},
		{"prefix rewrite", config.RouteMatch{Prefix: "/old"}, config.Redirect{PrefixRewrite: "/new"},
			[]string{"example.com", "/old/a?x=1"}, 301, "http://example.com/new/a?x=1"},
		{"prefix rewrite strip query", config.RouteMatch{Prefix: "/old"}, config.Redirect{PrefixRewrite: "/new", StripQuery: true},
			[]string{"example.com", "/old/a?x=1"}, 301, "http://example.com/new/a"},
		{"strip query only", config.RouteMatch{}, config.Redirect{StripQuery: true, SchemeRedirect: "https"},
			[]string{"example.com", "/a?x=1"}, 301, "https://example.com/a"},
		{"302", config.RouteMatch{}, config.Redirect{HostRedirect: "b.com", ResponseCode: 302},
			[]string{"a.com", "/"}, 302, "http://b.com/"},
		{"308", config.RouteMatch{}, config.Redirect{HostRedirect: "b.com", ResponseCode: 308},
			[]string{"a.com", "/"}, 308, "http://b.com/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd := tt.redirect
			r := oneRoute(t, &config.Route{Match: tt.match, Redirect: &rd})
			code, loc := r.RedirectLocation(req(tt.req[0], tt.req[1], tt.req[2:]...))
			if code != tt.code || loc != tt.want {
				t.Fatalf("got %d %q, want %d %q", code, loc, tt.code, tt.want)
			}
		})
	}

	plain := oneRoute(t, &config.Route{Action: toCluster("c")})
	if code, loc := plain.RedirectLocation(req("a", "/")); code != 0 || loc != "" {
		t.Fatalf("non-redirect route: %d %q", code, loc)
	}
}
