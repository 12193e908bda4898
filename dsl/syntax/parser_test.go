package syntax

import (
	"fmt"
	"strings"
	"testing"
)

func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("t.sluice", []byte(src))
	if err != nil {
		t.Fatalf("Parse(%q):\n%v", src, err)
	}
	return f
}

// Each good case is parsed inside the block its statement belongs to; the
// statement (or statements) is dumped without positions.
func TestParseStatements(t *testing.T) {
	top := func(s string) string { return s }
	upstream := func(s string) string { return "upstream u {\n  " + s + "\n}\n" }
	listener := func(s string) string { return "listener l 127.0.0.1:80 {\n  " + s + "\n}\n" }
	route := func(s string) string { return "listener l 127.0.0.1:80 {\n  route r {\n    " + s + "\n  }\n}\n" }
	on := func(s string) string { return "listener l 127.0.0.1:80 {\n  on request {\n    " + s + "\n  }\n}\n" }
	test := func(s string) string { return "test \"t\" {\n  " + s + "\n}\n" }
	pick := map[string]func(f *File) any{
		"top":      func(f *File) any { return f.Decls },
		"upstream": func(f *File) any { return f.Decls[0].(*Upstream).Stmts },
		"listener": func(f *File) any { return f.Decls[0].(*Listener).Items },
		"route":    func(f *File) any { return f.Decls[0].(*Listener).Items[0].(*Route).Actions },
		"on":       func(f *File) any { return f.Decls[0].(*Listener).Items[0].(*On).Actions },
		"test":     func(f *File) any { return f.Decls[0].(*Test).Stmts },
	}
	wrap := map[string]func(string) string{"top": top, "upstream": upstream, "listener": listener, "route": route, "on": on, "test": test}

	cases := []struct{ in, src, want string }{
		// top level
		{"top", "admin 127.0.0.1:9901", "[Admin{Addr:127.0.0.1:9901}]"},
		{"top", "admin [::1]:9901", "[Admin{Addr:[::1]:9901}]"},
		{"top", "admin :9901", "[Admin{Addr::9901}]"},
		{"top", `import "common/upstreams.sluice"`, `[Import{Path:"common/upstreams.sluice"}]`},
		{"top", "upstream a {}", "[Upstream{Name:a}]"},
		{"top", "upstream a { endpoint 10.0.0.1:80 }", "[Upstream{Name:a Stmts:[Endpoint{Addr:10.0.0.1:80}]}]"},
		{"top", "listener public 0.0.0.0:8080 {}", "[Listener{Name:public Addr:0.0.0.0:8080}]"},
		{"top", `test "it works" {}`, `[Test{Name:"it works"}]`},
		{"top", "admin 127.0.0.1:1; admin 127.0.0.1:2", "[Admin{Addr:127.0.0.1:1} Admin{Addr:127.0.0.1:2}]"},
		{"top", "upstream my-api_2 {}", "[Upstream{Name:my-api_2}]"},

		// upstream
		{"upstream", "endpoint 10.0.0.1:80", "[Endpoint{Addr:10.0.0.1:80}]"},
		{"upstream", "endpoint backend.svc.cluster.local:8080 weight 5", "[Endpoint{Addr:backend.svc.cluster.local:8080 Weight:5}]"},
		{"upstream", "endpoint [2001:db8::1]:443", "[Endpoint{Addr:[2001:db8::1]:443}]"},
		{"upstream", "lb round_robin", "[LB{Policy:round_robin}]"},
		{"upstream", "lb least_request", "[LB{Policy:least_request}]"},
		{"upstream", "lb random", "[LB{Policy:random}]"},
		{"upstream", `lb ring_hash(request.headers["x-user"])`, `[LB{Policy:ring_hash Hash:<request.headers["x-user"]>}]`},
		{"upstream", "lb maglev( source.address )", "[LB{Policy:maglev Hash:<source.address>}]"},
		{"upstream", `lb ring_hash(request.headers[")"] + string(source.port))`, `[LB{Policy:ring_hash Hash:<request.headers[")"] + string(source.port)>}]`},
		{"upstream", "connect_timeout 250ms", "[ConnectTimeout{Timeout:250ms}]"},
		{"upstream", "connect_timeout 1m30s", "[ConnectTimeout{Timeout:1m30s}]"},
		{"upstream", "connect_timeout 1.5s", "[ConnectTimeout{Timeout:1.5s}]"},
		{"upstream", "protocol http2", "[Protocol{Name:http2}]"},
		{"upstream", `health_check http "/healthz" interval 5s`, `[HealthCheck{Kind:http Path:"/healthz" Interval:5s}]`},
		{"upstream", `health_check http "/healthz"`, `[HealthCheck{Kind:http Path:"/healthz"}]`},
		{"upstream", "protocol auto", "[Protocol{Name:auto}]"},
		{"upstream", "protocol downstream", "[Protocol{Name:downstream}]"},
		{"upstream", "tls {}", "[TLS{}]"},
		{"upstream", "tls {\n    sni \"api.example.com\"\n    ca \"certs/ca.pem\"\n    cert \"client.pem\" key \"client.key\"\n    alpn \"h2\"\n    san \"a\"; san \"b\"\n    min_version \"TLSv1_3\"\n  }",
			`[TLS{Stmts:[TLSOption{Name:sni Value:"api.example.com"} TLSOption{Name:ca Value:"certs/ca.pem"} TLSCert{Cert:"client.pem" Key:"client.key"} ` +
				`TLSOption{Name:alpn Value:"h2"} TLSOption{Name:san Value:"a"} TLSOption{Name:san Value:"b"} TLSOption{Name:min_version Value:"TLSv1_3"}]}]`},
		{"upstream", `tls { sni "x" }`, `[TLS{Stmts:[TLSOption{Name:sni Value:"x"}]}]`},
		{"upstream", "http2 {\n    max_concurrent_streams 100\n    initial_stream_window 65535\n    initial_connection_window 1048576\n    keepalive 30s timeout 5s\n  }",
			"[HTTP2{Stmts:[HTTP2Setting{Name:max_concurrent_streams Value:100} HTTP2Setting{Name:initial_stream_window Value:65535} " +
				"HTTP2Setting{Name:initial_connection_window Value:1048576} Keepalive{Interval:30s Timeout:5s}]}]"},
		{"upstream", "http2 { keepalive 1m }", "[HTTP2{Stmts:[Keepalive{Interval:1m}]}]"},

		// listener
		{"listener", "protocol auto", "[Protocol{Name:auto}]"},
		{"listener", "protocol http1", "[Protocol{Name:http1}]"},
		{"listener", "tls {\n    cert \"a.pem\" key \"a.key\" # first\n    cert \"/etc/b.pem\" key \"/etc/b.key\"\n    alpn \"h2,http/1.1\"\n    client_ca \"ca.pem\"\n    require_client_cert\n    min_version \"TLSv1_2\"; max_version \"TLSv1_3\"\n    cipher_suites \"ECDHE-RSA-AES128-GCM-SHA256\"\n  }",
			`[TLS{Stmts:[TLSCert{Comment:# first Cert:"a.pem" Key:"a.key"} TLSCert{Cert:"/etc/b.pem" Key:"/etc/b.key"} TLSOption{Name:alpn Value:"h2,http/1.1"} ` +
				`TLSOption{Name:client_ca Value:"ca.pem"} TLSOption{Name:require_client_cert} TLSOption{Name:min_version Value:"TLSv1_2"} ` +
				`TLSOption{Name:max_version Value:"TLSv1_3"} TLSOption{Name:cipher_suites Value:"ECDHE-RSA-AES128-GCM-SHA256"}]}]`},
		{"listener", "http2 { max_concurrent_streams 10 }", "[HTTP2{Stmts:[HTTP2Setting{Name:max_concurrent_streams Value:10}]}]"},
		{"listener", "on request {}", "[On{Phase:request}]"},
		{"listener", "on response when response.code >= 500 {}", "[On{Phase:response When:<response.code >= 500>}]"},
		{"listener", `on request when request.headers["x"] == "{" {}`, `[On{Phase:request When:<request.headers["x"] == "{">}]`},
		{"listener", `route r when request.path.startsWith("/api/") && request.headers["x-canary"] == "true" {}`,
			`[Route{Name:r When:<request.path.startsWith("/api/") && request.headers["x-canary"] == "true">}]`},
		{"listener", "route r when (request.path == \"/a\" ||\n      request.path == \"/b\") {}",
			"[Route{Name:r When:<(request.path == \"/a\" ||\n      request.path == \"/b\")>}]"},
		{"listener", `route r when ({"a": true}["a"]) {}`, `[Route{Name:r When:<({"a": true}["a"])>}]`},
		{"listener", `route r when request.path == '}' || request.path == r"\" {}`, `[Route{Name:r When:<request.path == '}' || request.path == r"\">}]`},
		{"listener", `route r when request.path in ["/a", "/b"] {}`, `[Route{Name:r When:<request.path in ["/a", "/b"]>}]`},
		{"listener", "route fallback { respond 404 }", "[Route{Name:fallback Actions:[Respond{Code:404}]}]"},
		{"listener", `lua "filters/add-header.lua"`, `[Lua{File:"filters/add-header.lua"}]`},
		{"listener", "lua `function envoy_on_request(h)\n  h:headers():add(\"x\", \"y\")\nend`",
			"[Lua{Code:`function envoy_on_request(h)\n  h:headers():add(\"x\", \"y\")\nend`}]"},
		{"listener", "wasm \"filters/auth.wasm\" config `{\"realm\": \"api\"}`", "[Wasm{File:\"filters/auth.wasm\" Config:`{\"realm\": \"api\"}`}]"},
		{"listener", `wasm "a.wasm" root_id "auth" config "{}"`, `[Wasm{File:"a.wasm" Config:"{}" RootID:"auth"}]`},
		{"listener", "route a {}\n  lua \"x.lua\"\n  route b {}", `[Route{Name:a} Lua{File:"x.lua"} Route{Name:b}]`},

		// actions
		{"route", `set request.headers["x-a"] = "b"`, `[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:"x-a"} Value:<"b">}]`},
		{"route", `add response.headers["x-a"] = request.headers["x-b"] + "c"`, `[HeaderAction{Op:add Target:HeaderRef{Msg:response Key:"x-a"} Value:<request.headers["x-b"] + "c">}]`},
		{"route", `remove request.headers["cookie"]`, `[HeaderAction{Op:remove Target:HeaderRef{Msg:request Key:"cookie"}}]`},
		{"route", `set request.headers["x"] = {"a": "b"}["a"]`, `[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:"x"} Value:<{"a": "b"}["a"]>}]`},
		{"route", `set request.headers["x"] = "a;b#c}" # why`, `[HeaderAction{Comment:# why Op:set Target:HeaderRef{Msg:request Key:"x"} Value:<"a;b#c}">}]`},
		{"route", `set request.headers["x"] = 'it''s' + r"raw\" + """tri"ple"""`, `[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:"x"} Value:<'it''s' + r"raw\" + """tri"ple""">}]`},
		{"route", "set request.headers[\"x\"] = request.path.replace(\n      \"/a\", \"/b\")", "[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:\"x\"} Value:<request.path.replace(\n      \"/a\", \"/b\")>}]"},
		{"route", `set request.headers["a"] = "1"; remove request.headers["b"]`, `[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:"a"} Value:<"1">} HeaderAction{Op:remove Target:HeaderRef{Msg:request Key:"b"}}]`},
		{"route", `rewrite path "/v2" + request.path`, `[Rewrite{What:path Value:<"/v2" + request.path>}]`},
		{"route", `rewrite host "example.com"`, `[Rewrite{What:host Value:<"example.com">}]`},
		{"route", "ratelimit 100 per 1s", "[RateLimit{Count:100 Per:1s}]"},
		{"route", "ratelimit 10 per 1m by source.address", "[RateLimit{Count:10 Per:1m By:<source.address>}]"},
		{"route", "delay 250ms", "[Delay{Duration:250ms}]"},
		{"route", "delay 250ms percent 10", "[Delay{Duration:250ms Percent:10}]"},
		{"route", "abort 503", "[Abort{Code:503}]"},
		{"route", "abort 503 percent 0.5", "[Abort{Code:503 Percent:0.5}]"},
		{"route", "respond 204", "[Respond{Code:204}]"},
		{"route", `respond 200 "ok\n"`, `[Respond{Code:200 Body:<"ok\n">}]`},
		{"route", `respond 404 "no route for " + request.path + "\n"`, `[Respond{Code:404 Body:<"no route for " + request.path + "\n">}]`},
		{"route", `redirect 301 "https://example.com" + request.path`, `[Redirect{Code:301 Location:<"https://example.com" + request.path>}]`},
		{"route", "deny", "[Deny{}]"},
		{"route", "deny 401", "[Deny{Code:401}]"},
		{"route", "proxy api", "[Proxy{Upstream:api}]"},
		{"route", `proxy api timeout 2s retries 2 retry_on "5xx,connect-failure"`, `[Proxy{Upstream:api Timeout:2s Retries:2 RetryOn:"5xx,connect-failure"}]`},
		{"route", "proxy api mirror shadow", "[Proxy{Upstream:api Mirror:shadow}]"},
		{"route", "proxy api mirror shadow percent 10 timeout 1s", "[Proxy{Upstream:api Timeout:1s Mirror:shadow MirrorPercent:10}]"},
		{"route", "proxy split(api: 90, api_v2: 10)", "[Proxy{Split:[SplitTarget{Upstream:api Weight:90} SplitTarget{Upstream:api_v2 Weight:10}]}]"},
		{"route", "proxy split(\n      a: 1,\n      b: 0,\n    ) timeout 3s", "[Proxy{Split:[SplitTarget{Upstream:a Weight:1} SplitTarget{Upstream:b Weight:0}] Timeout:3s}]"},
		{"route", "proxy split", "[Proxy{Upstream:split}]"},
		{"route", `lua "route.lua"`, `[Lua{File:"route.lua"}]`},
		{"route", `wasm "route.wasm"`, `[Wasm{File:"route.wasm"}]`},
		{"on", `set request.headers["x-request-id-echo"] = request.id`, `[HeaderAction{Op:set Target:HeaderRef{Msg:request Key:"x-request-id-echo"} Value:<request.id>}]`},
		{"on", "respond 403", "[Respond{Code:403}]"},

		// tests
		{"test", `request GET "http://example.com/api/users" header "x-canary" "true"`, `[Request{Method:GET URL:"http://example.com/api/users" Headers:[TestHeader{Name:"x-canary" Value:"true"}]}]`},
		{"test", `request POST "http://x/" header "a" "1" header "b" "2" source "10.9.0.1" body "hi"`,
			`[Request{Method:POST URL:"http://x/" Headers:[TestHeader{Name:"a" Value:"1"} TestHeader{Name:"b" Value:"2"}] Source:"10.9.0.1" Body:"hi"}]`},
		{"test", "expect route canary", "[ExpectRoute{Route:canary}]"},
		{"test", "expect upstream api_v2", "[ExpectUpstream{Upstream:api_v2}]"},
		{"test", "expect respond 404", "[ExpectRespond{Code:404}]"},
		{"test", `expect respond 200 "ok\n"`, `[ExpectRespond{Code:200 Body:"ok\n"}]`},
		{"test", `expect header "x-route" "api"`, `[ExpectHeader{Name:"x-route" Value:"api"}]`},
	}
	for _, c := range cases {
		src := wrap[c.in](c.src)
		t.Run(c.src, func(t *testing.T) {
			f := mustParse(t, src)
			if got := dump(pick[c.in](f)); got != c.want {
				t.Errorf("Parse(%q)\n got  %s\n want %s", src, got, c.want)
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	f := mustParse(t, "admin [::1]:9901\n"+
		"upstream u {\n  connect_timeout 1m30s\n  endpoint h:80 weight 3\n}\n"+
		"import \"a\\tb\\u00e9\\x41\"\n"+
		"listener l :8080 {\n  lua `raw\\n`\n}\n")
	admin := f.Decls[0].(*Admin)
	if admin.Addr.Host != "::1" || admin.Addr.Port != "9901" {
		t.Errorf("admin address: host %q port %q", admin.Addr.Host, admin.Addr.Port)
	}
	u := f.Decls[1].(*Upstream)
	if d := u.ConnectTimeout().Timeout.Value.String(); d != "1m30s" {
		t.Errorf("connect_timeout = %s", d)
	}
	if eps := u.Endpoints(); len(eps) != 1 || eps[0].Weight.Int() != 3 || eps[0].Addr.Host != "h" {
		t.Errorf("endpoints: %s", dump(eps))
	}
	if u.LB() != nil || u.Protocol() != nil || u.HealthCheck() != nil {
		t.Errorf("absent statements are not nil")
	}
	if v := f.Decls[2].(*Import).Path.Value; v != "a\tbéA" {
		t.Errorf("string value = %q", v)
	}
	l := f.Decls[3].(*Listener)
	if l.Addr.Host != "" || l.Addr.Port != "8080" {
		t.Errorf("listener address: %+v", l.Addr)
	}
	if lua := l.Items[0].(*Lua); lua.Code == nil || lua.Code.Value != `raw\n` || lua.File != nil {
		t.Errorf("inline lua: %s", dump(lua))
	}
}

func TestPositions(t *testing.T) {
	src := "# c\nlistener l 127.0.0.1:80 {\n\troute r when request.path == \"/é\" {\n\t\trespond 200 \"ok\"\n\t}\n}\n"
	f := mustParse(t, src)
	l := f.Decls[0].(*Listener)
	r := l.Items[0].(*Route)
	resp := r.Actions[0].(*Respond)
	for _, c := range []struct {
		name string
		got  Pos
		want string
	}{
		{"listener", l.Pos, "t.sluice:2:1"},
		{"listener name", l.Name.Pos, "t.sluice:2:10"},
		{"listener addr", l.Addr.Pos, "t.sluice:2:12"},
		{"lbrace", l.Body.Lbrace, "t.sluice:2:25"},
		{"route", r.Pos, "t.sluice:3:2"},
		{"when", r.When.Pos, "t.sluice:3:15"},
		{"when end", r.When.End, "t.sluice:3:36"}, // "é" is two bytes
		{"respond", resp.Pos, "t.sluice:4:3"},
		{"respond code", resp.Code.Pos, "t.sluice:4:11"},
		{"respond body", resp.Body.Pos, "t.sluice:4:15"},
		{"route end", r.End, "t.sluice:5:3"},
		{"rbrace", l.Body.Rbrace, "t.sluice:6:1"},
	} {
		if c.got.String() != c.want {
			t.Errorf("%s at %s, want %s", c.name, c.got, c.want)
		}
		if c.got.Offset < len(src) && c.got.Offset >= 0 {
			// Offset, line and column agree.
			line := strings.Count(src[:c.got.Offset], "\n") + 1
			col := c.got.Offset - strings.LastIndexByte(src[:c.got.Offset], '\n')
			if line != c.got.Line || col != c.got.Col {
				t.Errorf("%s: offset %d is %d:%d, not %d:%d", c.name, c.got.Offset, line, col, c.got.Line, c.got.Col)
			}
		}
	}
	if got := r.When.Text; got != `request.path == "/é"` {
		t.Errorf("when text %q", got)
	}
}

func TestExprPosAt(t *testing.T) {
	src := "listener l 127.0.0.1:80 {\n  route r when (a ||\n      \"é\" == b) {}\n}\n"
	f := mustParse(t, src)
	e := f.Decls[0].(*Listener).Items[0].(*Route).When
	if got := e.PosAt(0).String(); got != "t.sluice:2:16" {
		t.Errorf("PosAt(0) = %s", got)
	}
	off := strings.Index(e.Text, "b)")
	if got := e.PosAt(off).String(); got != "t.sluice:3:15" { // "é" is two bytes
		t.Errorf("PosAt(b) = %s", got)
	}
	// cel-go: line 2 of the expression, 0-based column 13 in code points.
	if got := e.PosAtLineCol(2, 13); got.String() != "t.sluice:3:15" {
		t.Errorf("PosAtLineCol(2, 13) = %s", got)
	}
}

func TestComments(t *testing.T) {
	src := `# file header

# about api
upstream api { # the api
  # first
  endpoint 10.0.0.1:80 # primary

  # tail of api
} # after api
listener l 127.0.0.1:80 {
  route r {
    respond 200 # ok
    # end of route
  }
}
# end of file
`
	f := mustParse(t, src)
	got := dump(f)
	want := `File{Decls:[Upstream{Doc:[# file header # about api] Comment:# after api Name:api Stmts:[Endpoint{Doc:[# first] Comment:# primary Addr:10.0.0.1:80}] Body:{OpenComment:# the api Tail:[# tail of api]}} Listener{Name:l Addr:127.0.0.1:80 Items:[Route{Name:r Actions:[Respond{Comment:# ok Code:200}] Body:{Tail:[# end of route]}}]}] Tail:[# end of file] Comments:[# file header # about api # the api # first # primary # tail of api # after api # ok # end of route # end of file]}`
	if got != want {
		t.Errorf("comments:\n got  %s\n want %s", got, want)
	}
	u := f.Decls[0].(*Upstream)
	if !u.Doc[1].BlankBefore || u.Doc[0].BlankBefore || u.BlankBefore {
		t.Errorf("blank lines: doc %v %v, upstream %v", u.Doc[0].BlankBefore, u.Doc[1].BlankBefore, u.BlankBefore)
	}
	if !u.Body.Tail[0].BlankBefore {
		t.Errorf("blank line before the tail comment lost")
	}
}

// Bad inputs: the complete rendered diagnostics.
func TestParseErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"admin", `
t.sluice:1:6: expected the admin address, found end of file
    admin
         ^
    hint: an address is HOST:PORT, as in 127.0.0.1:8080, localhost:8080 or [::1]:8080`},
		{"admin 127.0.0.1", `
t.sluice:1:7: invalid address ` + "`127.0.0.1`" + `: missing port in address
    admin 127.0.0.1
          ^
    hint: an address is HOST:PORT, as in 127.0.0.1:8080, localhost:8080 or [::1]:8080`},
		{"admin 127.0.0.1:99999", `
t.sluice:1:17: invalid port ` + "`99999`" + `
    admin 127.0.0.1:99999
                    ^
    hint: a port is a number from 1 to 65535`},
		{"upstream {", `
t.sluice:1:10: expected an upstream name, found ` + "`{`" + `
    upstream {
             ^`},
		{"upstream a\n{\n}", `
t.sluice:1:11: expected ` + "`{`" + ` to open the upstream block, found end of line
    upstream a
              ^
    hint: the ` + "`{`" + ` goes on the same line as the statement that opens the block`},
		{"upstream a {\n  endpont 1.2.3.4:80\n}", `
t.sluice:2:3: unknown statement ` + "`endpont`" + ` in an upstream block
      endpont 1.2.3.4:80
      ^
    hint: did you mean ` + "`endpoint`" + `? expected one of: endpoint, lb, connect_timeout, protocol, http2, tls, health_check`},
		{"upstream a {\n  route r {}\n}", `
t.sluice:2:3: ` + "`route`" + ` is not allowed in an upstream block
      route r {}
      ^
    hint: ` + "`route`" + ` belongs in a listener block; here expected one of: endpoint, lb, connect_timeout, protocol, http2, tls, health_check`},
		{"upstream a {\n  protocol http3\n}", `
t.sluice:2:12: unknown upstream protocol ` + "`http3`" + `
      protocol http3
               ^
    hint: did you mean ` + "`http1`" + `? expected one of: http1, http2, auto, downstream`},
		{"upstream a {\n  tls sni \"x\"\n}", `
t.sluice:2:7: expected ` + "`{`" + ` to open the tls block, found ` + "`sni`" + `
      tls sni "x"
          ^`},
		{"upstream a {\n  tls {\n    client_ca \"ca.pem\"\n  }\n}", `
t.sluice:3:5: ` + "`client_ca`" + ` is not allowed in an upstream's tls block
        client_ca "ca.pem"
        ^
    hint: ` + "`client_ca`" + ` belongs in a listener's tls block; here expected one of: sni, ca, cert, san, alpn, min_version, max_version, cipher_suites`},
		{"listener l :443 {\n  tls {\n    cert \"a.pem\"\n  }\n}", `
t.sluice:3:17: expected ` + "`key`" + ` and the private key file after the certificate, found end of line
        cert "a.pem"
                    ^
    hint: a certificate goes with its key: cert "server.pem" key "server.key"`},
		{"listener l :443 {\n  tls {\n    cert \"a.pem\"\n    key \"a.key\"\n  }\n}", `
t.sluice:3:17: expected ` + "`key`" + ` and the private key file after the certificate, found end of line
        cert "a.pem"
                    ^
    hint: a certificate goes with its key: cert "server.pem" key "server.key"
t.sluice:4:5: ` + "`key`" + ` must follow ` + "`cert \"FILE\"`" + `
        key "a.key"
        ^
    hint: write the certificate and its key on one line: cert "server.pem" key "server.key"`},
		{"listener l :443 {\n  tls {\n    alpn h2\n  }\n}", `
t.sluice:3:10: expected the ALPN protocols, as in "h2,http/1.1" (a quoted string), found ` + "`h2`" + `
        alpn h2
             ^`},
		{"listener l :443 {\n  tls {\n    require_client_cert true\n  }\n}", `
t.sluice:3:25: expected end of statement, found ` + "`true`" + `
        require_client_cert true
                            ^
    hint: a statement ends at a line break or ` + "`;`"},
		{"listener l :443 {\n  tls {\n    san \"x\"\n  }\n}", `
t.sluice:3:5: ` + "`san`" + ` is not allowed in a listener's tls block
        san "x"
        ^
    hint: ` + "`san`" + ` belongs in an upstream's tls block; here expected one of: cert, alpn, client_ca, require_client_cert, min_version, max_version, cipher_suites`},
		{"listener l :443 {\n  tls {\n    certs \"x\"\n  }\n}", `
t.sluice:3:5: unknown statement ` + "`certs`" + ` in a listener's tls block
        certs "x"
        ^
    hint: did you mean ` + "`cert`" + `? expected one of: cert, alpn, client_ca, require_client_cert, min_version, max_version, cipher_suites`},
		{"listener l :443 {\n  alpn \"h2\"\n}", `
t.sluice:2:3: ` + "`alpn`" + ` is not allowed in a listener block
      alpn "h2"
      ^
    hint: ` + "`alpn`" + ` belongs in a tls block; here expected one of: protocol, tls, http2, access_log, on, lua, wasm, route`},
		{"upstream a {\n  http2 {\n    initial_stream_window 1024\n  }\n}", `
t.sluice:3:27: window size in bytes must be an integer from 65535 to 2147483647, found ` + "`1024`" + `
        initial_stream_window 1024
                              ^`},
		{"upstream a {\n  http2 {\n    keepalive 30s timeot 1s\n  }\n}", `
t.sluice:3:19: unexpected ` + "`timeot`" + ` in keepalive statement
        keepalive 30s timeot 1s
                      ^
    hint: did you mean ` + "`timeout`" + `? expected one of: timeout, the end of the statement`},
		{"upstream a {\n  http2 {\n    max_streams 10\n  }\n}", `
t.sluice:3:5: unknown statement ` + "`max_streams`" + ` in an http2 block
        max_streams 10
        ^
    hint: expected one of: max_concurrent_streams, initial_stream_window, initial_connection_window, keepalive`},
		{"listener l :443 {\n  route r {\n    protocol http2\n  }\n}", `
t.sluice:3:5: ` + "`protocol`" + ` is not allowed in a route
        protocol http2
        ^
    hint: ` + "`protocol`" + ` belongs in an upstream block or in a listener block; here expected one of: set, add, remove, rewrite, ratelimit, delay, abort, respond, redirect, deny, proxy, lua, wasm`},
		{"upstream a {\n  lb fastest\n}", `
t.sluice:2:6: unknown load balancing policy ` + "`fastest`" + `
      lb fastest
         ^
    hint: expected one of: round_robin, least_request, random, ring_hash, maglev`},
		{"upstream a {\n  lb ring_hash\n}", `
t.sluice:2:15: expected ` + "`(`" + ` after ` + "`ring_hash`" + `, found end of line
      lb ring_hash
                  ^
    hint: ring_hash needs a hash key, as in ring_hash(request.headers["x-user"])`},
		{"upstream a {\n  lb random(x)\n}", `
t.sluice:2:12: ` + "`random`" + ` takes no argument
      lb random(x)
               ^`},
		{"upstream a {\n  lb maglev()\n}", `
t.sluice:2:13: expected a hash key expression, found ` + "`)`" + `
      lb maglev()
                ^`},
		{"upstream a {\n  lb maglev(f(x)\n}", `
t.sluice:2:12: missing ` + "`)`" + ` to match this ` + "`(`" + `
      lb maglev(f(x)
               ^`},
		{"upstream a {\n  connect_timeout 5\n}", `
t.sluice:2:19: a connect timeout needs a unit, found ` + "`5`" + `
      connect_timeout 5
                      ^
    hint: a duration is a number with a unit: ns, us, ms, s, m or h, as in 250ms, 1s or 1m30s`},
		{"upstream a {\n  connect_timeout 5x\n}", `
t.sluice:2:19: invalid duration ` + "`5x`" + `
      connect_timeout 5x
                      ^
    hint: a duration is a number with a unit: ns, us, ms, s, m or h, as in 250ms, 1s or 1m30s`},
		{"upstream a {\n  endpoint 1.2.3.4:80 weight 0\n}", `
t.sluice:2:30: endpoint weight must be an integer from 1 to 2147483647, found ` + "`0`" + `
      endpoint 1.2.3.4:80 weight 0
                                 ^`},
		{"listener l 127.0.0.1:80 {\n  route r when {\n  }\n}", `
t.sluice:2:16: expected a condition after ` + "`when`" + `, found ` + "`{`" + `
      route r when {
                   ^`},
		{"listener l 127.0.0.1:80 {\n  route r when request.path == \"/\"\n  {\n  }\n}", `
t.sluice:2:35: expected ` + "`{`" + ` after the condition, found end of line
      route r when request.path == "/"
                                      ^
    hint: a condition ends at the end of its line: put the ` + "`{`" + ` there; to break a long condition, wrap it in parentheses
t.sluice:3:3: expected a statement, found ` + "`{`" + `
      {
      ^
    hint: expected one of: protocol, tls, http2, access_log, on, lua, wasm, route`},
		{"listener l 127.0.0.1:80 {\n  route r when f(a {\n    respond 200\n  }\n}", `
t.sluice:2:17: unclosed ` + "`(`" + ` in expression
      route r when f(a {
                    ^
    hint: an expression ends at the end of its line unless a bracket is open`},
		{"listener l 127.0.0.1:80 {\n  route r when {\"a\": 1}[\"a\"] == 1 {\n  }\n}", `
t.sluice:2:16: expected a condition after ` + "`when`" + `, found ` + "`{`" + `
      route r when {"a": 1}["a"] == 1 {
                   ^`},
		{"listener l 127.0.0.1:80 {\n  on requests {}\n}", `
t.sluice:2:6: unknown phase ` + "`requests`" + `
      on requests {}
         ^
    hint: did you mean ` + "`request`" + `? expected one of: request, response`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    set request.header[\"x\"] = \"a\"\n  }\n}", `
t.sluice:3:17: expected ` + "`headers`" + ` after ` + "`request.`" + `, found ` + "`header`" + `
        set request.header["x"] = "a"
                    ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    set request.headers[\"x\"] \"a\"\n  }\n}", `
t.sluice:3:30: expected ` + "`=`" + `, found string "a"
        set request.headers["x"] "a"
                                 ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    set request.headers[\"x\"] =\n  }\n}", `
t.sluice:3:31: expected a value after ` + "`=`" + `, found end of line
        set request.headers["x"] =
                                  ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    set request.headers[\"x\"] = \"a\n  }\n}", `
t.sluice:3:32: string not terminated
        set request.headers["x"] = "a
                                   ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    respond abc\n  }\n}", `
t.sluice:3:13: expected a status code, found ` + "`abc`" + `
        respond abc
                ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    respond 999\n  }\n}", `
t.sluice:3:13: status code must be an integer from 100 to 599, found ` + "`999`" + `
        respond 999
                ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    redirect 200 \"/x\"\n  }\n}", `
t.sluice:3:14: redirect status code must be 301, 302, 303, 307 or 308, found ` + "`200`" + `
        redirect 200 "/x"
                 ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy api timout 2s\n  }\n}", `
t.sluice:3:15: unexpected ` + "`timout`" + ` in proxy statement
        proxy api timout 2s
                  ^
    hint: did you mean ` + "`timeout`" + `? expected one of: timeout, retries, retry_on, mirror, the end of the statement`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy api timeout 2s timeout 3s\n  }\n}", `
t.sluice:3:26: duplicate ` + "`timeout`" + ` in proxy statement
        proxy api timeout 2s timeout 3s
                             ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy split(a 90)\n  }\n}", `
t.sluice:3:19: expected ` + "`:`" + ` and a weight after the upstream name, found number ` + "`90`" + `
        proxy split(a 90)
                      ^
    hint: split entries are NAME: WEIGHT, as in split(api: 90, api_v2: 10)`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy split(\n      a: 1, # first\n      b: 2)\n  }\n}", `
t.sluice:4:13: a comment cannot go inside split(...)
          a: 1, # first
                ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy split()\n  }\n}", `
t.sluice:3:16: split needs at least one upstream
        proxy split()
                   ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    proxy api retries many\n  }\n}", `
t.sluice:3:23: expected the number of retries, found ` + "`many`" + `
        proxy api retries many
                          ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    delay 1s percent 150\n  }\n}", `
t.sluice:3:22: percent must be from 0 to 100, found ` + "`150`" + `
        delay 1s percent 150
                         ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    ratelimit 10 1s\n  }\n}", `
t.sluice:3:18: expected ` + "`per`" + `, found duration ` + "`1s`" + `
        ratelimit 10 1s
                     ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    endpoint 1.2.3.4:80\n  }\n}", `
t.sluice:3:5: ` + "`endpoint`" + ` is not allowed in a route
        endpoint 1.2.3.4:80
        ^
    hint: ` + "`endpoint`" + ` belongs in an upstream block; here expected one of: set, add, remove, rewrite, ratelimit, delay, abort, respond, redirect, deny, proxy, lua, wasm`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    rewrite uri \"/\"\n  }\n}", `
t.sluice:3:13: expected ` + "`path` or `host`" + ` after rewrite, found ` + "`uri`" + `
        rewrite uri "/"
                ^`},
		// Tabs are kept in the caret line.
		{"listener l 127.0.0.1:80 {\n\troute r {\n\t\tdeny 4O3\n\t}\n}", `
t.sluice:3:8: expected a status code, found ` + "`4O3`" + `
    		deny 4O3
    		     ^`},
		{`import "a\qb"`, `
t.sluice:1:10: invalid escape sequence ` + "`\\q`" + ` in string
    import "a\qb"
             ^
    hint: valid escapes: \n \r \t \\ \" \a \b \f \v \xHH \uHHHH \UHHHHHHHH \OOO`},
		{`import "abc`, `
t.sluice:1:8: string not terminated
    import "abc
           ^
    hint: a "..." string ends on the line it starts; use a ` + "`raw string`" + ` for several lines`},
		{"import `abc", `
t.sluice:1:8: raw string not terminated
    import ` + "`abc" + `
           ^`},
		{"admin 127.0.0.1:80 @", `
t.sluice:1:20: unexpected character "@"
    admin 127.0.0.1:80 @
                       ^`},
		{"}", `
t.sluice:1:1: unexpected ` + "`}`" + `: no block is open
    }
    ^`},
		{"listener l 127.0.0.1:80 {\n  route r {\n    respond 200\n", `
t.sluice:2:11: unclosed ` + "`{`" + `: expected ` + "`}`" + ` before the end of the file
      route r {
              ^`},
		{"test \"t\" {\n  expect status 200\n}", `
t.sluice:2:10: unknown expectation ` + "`status`" + `
      expect status 200
             ^
    hint: expected one of: route, upstream, respond, header`},
		{"foo", `
t.sluice:1:1: unknown statement ` + "`foo`" + ` at the top level
    foo
    ^
    hint: expected one of: admin, import, upstream, listener, test`},
		{"endpoint 1.2.3.4:80", `
t.sluice:1:1: ` + "`endpoint`" + ` is not allowed at the top level
    endpoint 1.2.3.4:80
    ^
    hint: ` + "`endpoint`" + ` belongs in an upstream block; here expected one of: admin, import, upstream, listener, test`},
		{"upstream a { endpoint 1.2.3.4:80 weight 2 3 }", `
t.sluice:1:43: unexpected number ` + "`3`" + ` in endpoint statement
    upstream a { endpoint 1.2.3.4:80 weight 2 3 }
                                              ^
    hint: expected one of: weight, the end of the statement`},
		{"admin 127.0.0.1:80 80", `
t.sluice:1:20: expected end of statement, found number ` + "`80`" + `
    admin 127.0.0.1:80 80
                       ^
    hint: a statement ends at a line break or ` + "`;`"},
		// Several errors at once: recovery at statement boundaries.
		{"upstream a {\n  endpoint 1.2.3.4\n  lb fastest\n}\nlistener l 127.0.0.1:80 {\n  route r when {\n    respond 200\n  }\n  route s {\n    proxy a retries many\n  }\n}", `
t.sluice:2:12: invalid address ` + "`1.2.3.4`" + `: missing port in address
      endpoint 1.2.3.4
               ^
    hint: an address is HOST:PORT, as in 127.0.0.1:8080, localhost:8080 or [::1]:8080
t.sluice:3:6: unknown load balancing policy ` + "`fastest`" + `
      lb fastest
         ^
    hint: expected one of: round_robin, least_request, random, ring_hash, maglev
t.sluice:6:16: expected a condition after ` + "`when`" + `, found ` + "`{`" + `
      route r when {
                   ^
t.sluice:10:21: expected the number of retries, found ` + "`many`" + `
        proxy a retries many
                        ^`},
	}
	for _, c := range cases {
		t.Run(c.src, func(t *testing.T) {
			_, err := Parse("t.sluice", []byte(c.src))
			if err == nil {
				t.Fatalf("Parse(%q) succeeded", c.src)
			}
			want := strings.TrimPrefix(c.want, "\n")
			if got := err.Error(); got != want {
				t.Errorf("Parse(%q):\n--- got\n%s\n--- want\n%s", c.src, got, want)
			}
		})
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "bogus%d\n", i)
	}
	_, err := Parse("t.sluice", []byte(b.String()))
	ds, ok := err.(Diagnostics)
	if !ok {
		t.Fatalf("error is %T, not Diagnostics", err)
	}
	if len(ds) != MaxErrors+1 || ds[MaxErrors].Msg != "too many errors; stopping" {
		t.Errorf("%d diagnostics, last %q", len(ds), ds[len(ds)-1].Msg)
	}
}

func TestPartialTree(t *testing.T) {
	f, err := Parse("t.sluice", []byte("upstream a {\n  lb fastest\n  endpoint 1.2.3.4:80\n}\nadmin 127.0.0.1:9901\n"))
	if err == nil {
		t.Fatal("no error")
	}
	if got, want := dump(f.Decls), "[Upstream{Name:a Stmts:[Endpoint{Addr:1.2.3.4:80}]} Admin{Addr:127.0.0.1:9901}]"; got != want {
		t.Errorf("partial tree\n got  %s\n want %s", got, want)
	}
}
