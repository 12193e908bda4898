package route

import (
	"fmt"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
)

// benchTable has 20 virtual hosts; "bench.example.com" holds 100 routes of
// the given kind, the request matching only the last one.
func benchTable(tb testing.TB, kind string) *Table {
	tb.Helper()
	rc := &config.RouteConfiguration{Name: "bench"}
	for i := 0; i < 18; i++ {
		rc.VirtualHosts = append(rc.VirtualHosts, &config.VirtualHost{
			Name: fmt.Sprintf("vh%d", i), Domains: []string{fmt.Sprintf("host%d.example.com", i), fmt.Sprintf("*.zone%d.example.net", i)},
			Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Action: toCluster("c")}},
		})
	}
	vh := &config.VirtualHost{Name: "bench", Domains: []string{"bench.example.com", "*.bench.example.org"}}
	for i := 0; i < 99; i++ {
		var m config.RouteMatch
		switch kind {
		case "prefix":
			m.Prefix = fmt.Sprintf("/svc%d/", i)
		case "exact":
			m.Path = fmt.Sprintf("/svc%d/target", i)
		case "regex":
			m.SafeRegex = fmt.Sprintf("/svc%d/[a-z]+", i)
		case "regex-alt":
			m.SafeRegex = fmt.Sprintf("/(?:svc%d|api%d)/[a-z]+", i, i)
		case "header":
			m.Prefix = "/"
			m.Headers = []config.HeaderMatcher{{Name: "x-tenant", Match: &config.StringMatcher{Kind: config.MatchExact, Value: fmt.Sprint(i)}}}
		}
		vh.Routes = append(vh.Routes, &config.Route{Name: fmt.Sprint(i), Match: m, Action: toCluster("c")})
	}
	var last config.RouteMatch
	switch kind {
	case "prefix":
		last.Prefix = "/target/"
	case "exact":
		last.Path = "/target/x"
	case "regex":
		last.SafeRegex = "/target/[a-z]+"
	case "regex-alt":
		last.SafeRegex = "/(?:target|tgt)/[a-z]+"
	case "header":
		last.Prefix = "/"
		last.Headers = []config.HeaderMatcher{{Name: "x-tenant", Match: &config.StringMatcher{Kind: config.MatchExact, Value: "target"}}}
	}
	vh.Routes = append(vh.Routes, &config.Route{Name: "last", Match: last, Action: toCluster("target")})
	rc.VirtualHosts = append(rc.VirtualHosts, vh, &config.VirtualHost{Name: "default", Domains: []string{"*"},
		Routes: []*config.Route{{Match: config.RouteMatch{Prefix: "/"}, Action: toCluster("d")}}})
	return mustCompile(tb, rc)
}

func benchRequest(host string) *header.Map {
	h := &header.Map{}
	h.Add(":method", "GET")
	h.Add(":scheme", "https")
	h.Add(":authority", host)
	h.Add(":path", "/target/x?debug=1")
	h.Add("user-agent", "bench/1.0")
	h.Add("accept", "*/*")
	h.Add("x-tenant", "target")
	return h
}

func BenchmarkMatch(b *testing.B) {
	for _, bc := range []struct{ name, kind, host string }{
		{"prefix-100-last/exact-domain", "prefix", "bench.example.com"},
		{"prefix-100-last/domain-with-port", "prefix", "bench.example.com:8443"},
		{"prefix-100-last/suffix-wildcard", "prefix", "a.bench.example.org"},
		{"prefix-100-last/mixed-case-domain", "prefix", "Bench.Example.COM"},
		{"exact-100-last/exact-domain", "exact", "bench.example.com"},
		{"header-100-last/exact-domain", "header", "bench.example.com"},
		{"regex-100-last/exact-domain", "regex", "bench.example.com"},
		// Patterns whose literal prefix ("/") does not tell them apart: every
		// regex runs.
		{"regex-alt-100-last/exact-domain", "regex-alt", "bench.example.com"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tb := benchTable(b, bc.kind)
			h := benchRequest(bc.host)
			if r := tb.Match(h); r == nil || r.Name() != "last" {
				b.Fatalf("matched %v", r)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if tb.Match(h) == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}

func BenchmarkHelpers(b *testing.B) {
	tb := mustCompile(b, &config.RouteConfiguration{VirtualHosts: []*config.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*config.Route{{
			Match: config.RouteMatch{Prefix: "/target/"},
			Action: &config.RouteAction{
				WeightedClusters: []*config.WeightedCluster{{Name: "a", Weight: 1}, {Name: "b", Weight: 2}, {Name: "c", Weight: 3}, {Name: "d", Weight: 4}},
				HashPolicy:       []config.HashPolicy{{Header: "x-tenant"}, {SourceIP: true}},
			},
		}},
	}}})
	r := tb.Match(benchRequest("h"))
	h := benchRequest("h")
	b.Run("PickCluster", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			r.PickCluster(uint32(i))
		}
	})
	b.Run("HashKey", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			r.HashKey(h, "10.1.2.3")
		}
	})
}
