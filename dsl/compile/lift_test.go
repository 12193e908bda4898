package compile

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/dsl/rules"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy/route"
)

func TestLift(t *testing.T) {
	for _, tc := range []struct {
		cond   string
		lifted []string
		rest   string
	}{
		{`request.path.startsWith("/api/")`, []string{"prefix /api/"}, ""},
		{`request.url_path.startsWith("/api/")`, []string{"prefix /api/"}, ""},
		{`request.path == "/healthz"`, []string{"path /healthz", "header :path exact /healthz"}, ""},
		{`"/healthz" == request.path`, []string{"path /healthz", "header :path exact /healthz"}, ""},
		{`request.url_path == "/healthz"`, []string{"path /healthz"}, ""},
		{`request.path == "/a?b=1"`, []string{"header :path exact /a?b=1"}, ""},
		{`request.path.startsWith("/a?b")`, []string{"header :path prefix /a?b"}, ""},
		{`request.url_path.startsWith("/a?b")`, nil, `request.url_path.startsWith("/a?b")`},
		{`request.headers["X-Canary"] == "true"`, []string{"header x-canary exact true"}, ""},
		{`request.headers["x-empty"] == ""`, []string{"header x-empty exact "}, ""},
		{`request.method == "POST"`, []string{"header :method exact POST"}, ""},
		{`request.host == "example.com"`, []string{"header :authority exact example.com"}, ""},
		{`request.host == ""`, nil, `request.host == ""`},
		{`request.path.startsWith("/api/") && request.headers["x-canary"] == "true"`,
			[]string{"prefix /api/", "header x-canary exact true"}, ""},
		{`request.method == "GET" && request.path.startsWith("/a/") && request.path.startsWith("/a/b")`,
			[]string{"header :method exact GET", "prefix /a/", "header :path prefix /a/b"}, ""},
		{`request.url_path == "/a" && request.url_path == "/b"`, []string{"path /a"}, `request.url_path == "/b"`},
		{`request.path.startsWith("/api/") && source.address.startsWith("10.")`,
			[]string{"prefix /api/"}, `source.address.startsWith("10.")`},
		{`source.address.startsWith("10.") && request.path.startsWith("/api/") && (request.query.contains("a") || request.method == "PUT")`,
			[]string{"prefix /api/"}, `(source.address.startsWith("10.")) && (request.query.contains("a") || request.method == "PUT")`},
		{`request.path.startsWith("/api/") || request.method == "GET"`, nil, `request.path.startsWith("/api/") || request.method == "GET"`},
		{`!(request.path == "/x")`, nil, `!(request.path == "/x")`},
		{`request.path.startsWith("/a" + "b")`, nil, `request.path.startsWith("/a" + "b")`},
		{`request.headers[?"x"].orValue("") == "y"`, nil, `request.headers[?"x"].orValue("") == "y"`},
		{`request.path.endsWith(".png")`, nil, `request.path.endsWith(".png")`},
		{`request.headers.exists(k, k.startsWith("x-")) && request.method == "GET"`,
			[]string{"header :method exact GET"}, `request.headers.exists(k, k.startsWith("x-"))`},
	} {
		t.Run(tc.cond, func(t *testing.T) {
			l, err := Lift(tc.cond)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l.Lifted, tc.lifted) || l.Rest != tc.rest {
				t.Errorf("lifted %q rest %q\nwant   %q rest %q", l.Lifted, l.Rest, tc.lifted, tc.rest)
			}
			if l.Rest == "" && len(tc.lifted) == 0 {
				t.Fatal("a condition vanished")
			}
			if l.Rest != "" {
				if _, err := testEnv.Compile(l.Rest, expr.Bool); err != nil {
					t.Errorf("the rest does not compile: %v", err)
				}
			}
		})
	}
}

// Lifting never changes which requests a route matches: for every
// condition and request, the route table with lifted matchers agrees with
// the condition evaluated as CEL (with the `when` error policy).
func TestLiftEquivalence(t *testing.T) {
	conds := []string{
		`request.path.startsWith("/api/")`,
		`request.url_path.startsWith("/api/")`,
		`request.path == "/healthz"`,
		`request.url_path == "/healthz"`,
		`request.path == "/a?b=1"`,
		`request.path.startsWith("/a?b")`,
		`request.headers["x-canary"] == "true"`,
		`request.headers["x-empty"] == ""`,
		`request.method == "POST"`,
		`request.host == "example.com"`,
		`request.path.startsWith("/api/") && request.headers["x-canary"] == "true"`,
		`request.method == "GET" && request.path.startsWith("/api/") && request.path.startsWith("/api/v1")`,
		`request.url_path == "/healthz" && request.url_path == "/other"`,
		`request.path.startsWith("/api/") && request.query.contains("debug")`,
		`request.headers["x-canary"] == "true" && request.headers["x-b"] == "1"`,
	}
	paths := []string{"/", "/api", "/api/", "/api/v1/users", "/api/v1?x=1", "/healthz", "/healthz?probe=1", "/a?b=1", "/a?b=12", "/a", "/other", "/API/"}
	hdrs := [][]string{
		nil,
		{"x-canary", "true"},
		{"X-Canary", "false"},
		{"x-canary", "true", "x-canary", "true"},
		{"x-empty", ""},
		{"x-canary", "true", "x-b", "1"},
	}
	var reqs []*dryStream
	for _, p := range paths {
		for _, h := range hdrs {
			for _, m := range []string{"GET", "POST"} {
				for _, host := range []string{"example.com", "other.example"} {
					d := &dryStream{}
					d.req.Add(":method", m)
					d.req.Add(":path", p)
					d.req.Add(":authority", host)
					d.req.Add(":scheme", "http")
					for i := 0; i+1 < len(h); i += 2 {
						d.req.Add(h[i], h[i+1])
					}
					reqs = append(reqs, d)
				}
			}
		}
	}
	for _, cond := range conds {
		res := compileSrc(t, fmt.Sprintf("listener l :8080 {\n  route r when %s { deny }\n}\n", cond))
		rc := res.Snapshot.Listeners[0].FilterChains[0].HTTP.RouteConfig
		lifted, err := route.Compile(rc)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := testEnv.Compile(cond, expr.Bool)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range reqs {
			want, err := rules.EvalWhen(prog, d)
			if err != nil {
				t.Fatal(err)
			}
			r, err := lifted.MatchSource(d)
			if err != nil {
				t.Fatal(err)
			}
			if got := r != nil; got != want {
				t.Errorf("%s on %s: lifted route matches=%v, CEL says %v (match %+v)", cond, fields(&d.req), got, want, rc.VirtualHosts[0].Routes[0].Match)
			}
		}
	}
}

func fields(h *header.Map) string {
	var s []string
	for _, f := range h.Fields() {
		s = append(s, f.Name+"="+f.Value)
	}
	return strings.Join(s, " ")
}

// Lifting never reorders routes: a lifted prefix route after a CEL route
// stays after it.
func TestLiftKeepsOrder(t *testing.T) {
	res := compileSrc(t, `
upstream a { endpoint 127.0.0.1:1 }
upstream b { endpoint 127.0.0.1:2 }
listener l :8080 {
  route cel when request.query.contains("beta") { proxy b }
  route lifted when request.path.startsWith("/") { proxy a }
}
`)
	ex, err := Explain(res, "", "GET", "/x?beta=1", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if ex.Route != "cel" {
		t.Errorf("route %s, want cel", ex.Route)
	}
	routes := res.Snapshot.Listeners[0].FilterChains[0].HTTP.RouteConfig.VirtualHosts[0].Routes
	if routes[0].Name != "cel" || routes[0].Match.Condition == nil || routes[1].Match.Prefix != "/" || routes[1].Match.Condition != nil {
		t.Errorf("routes: %s", dump(routes))
	}
}
