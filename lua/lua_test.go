package lua

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

func wantHeaders(t *testing.T, m *header.Map, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got, ok := m.Get(k); !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
}

func TestHeaders(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "headers.lua"))
	cb := newCB()
	req := get("/")
	req.headers = append(req.headers, header.Field{Name: "X-Replace", Value: "old"}, header.Field{Name: "x-remove", Value: "x"}, header.Field{Name: "X-Upper", Value: "Y"})
	o := exchange(fac, cb, req, message{})
	wantHeaders(t, &o.req, map[string]string{
		"x-added": "1", "x-replace": "new", "x-joined": "a,b", "x-idx1": "b", "x-idx9": "nil", "x-num": "2", "x-missing": "nil",
		"x-names": ":method,:path,:authority,:scheme,x-replace,x-upper,x-added,x-multi,x-multi,x-joined,x-idx1,x-idx9,x-num",
	})
	if o.req.Has("x-remove") {
		t.Error("x-remove not removed")
	}
	wantHeaders(t, &o.resp, map[string]string{"x-resp": "200"})
	if cb.cleared == 0 {
		t.Error("changing request headers did not clear the route cache")
	}
	if o.reqStatus[0] != stream.Continue || o.respStatus[0] != stream.Continue {
		t.Errorf("statuses %v %v", o.reqStatus, o.respStatus)
	}
}

func TestClearRouteCacheOff(t *testing.T) {
	cfg := inline(`function envoy_on_request(h) h:headers():add("a", "b") end`)
	cfg.ClearRouteCache = wrapperspb.Bool(false)
	cb := newCB()
	exchange(mustCompile(t, cfg), cb, get("/"), message{})
	if cb.cleared != 0 {
		t.Errorf("route cache cleared %d times with clear_route_cache false", cb.cleared)
	}
}

func TestBody(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "body.lua"))
	o := exchange(fac, newCB(), post("/", "hello ", "world"), message{})
	if o.reqStatus[0] != stream.StopAndBuffer {
		t.Fatalf("headers status %v, want stop_and_buffer", o.reqStatus[0])
	}
	if o.reqBody != "HELLO WORLD" {
		t.Errorf("body %q", o.reqBody)
	}
	wantHeaders(t, &o.req, map[string]string{"request_body_size": "11", "x-first": "hello"})
	// The response has no body: body() is nil at once, body(true) empty.
	wantHeaders(t, &o.resp, map[string]string{"x-nobody": "true", "x-wrapped-len": "0"})
	if o.respStatus[0] != stream.Continue {
		t.Errorf("response status %v", o.respStatus)
	}
}

func TestBodyChunks(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "chunks.lua"))
	cb := newCB()
	resp := message{headers: []header.Field{{Name: ":status", Value: "404"}}, chunks: []string{"{\"a\":", "1}"}}
	o := exchange(fac, cb, post("/", "ab", "cd", "ef"), resp)
	for i, st := range o.reqStatus {
		if st != stream.Continue {
			t.Errorf("request status %d = %v, want continue (streaming)", i, st)
		}
	}
	if o.reqBody != "ABCDEF" {
		t.Errorf("request body %q", o.reqBody)
	}
	if !strings.Contains(cb.logs.text(), "chunks=3") {
		t.Errorf("logs: %s", cb.logs.text())
	}
	if o.respBody != "<html><b>Not Found<b></html>" {
		t.Errorf("response body %q", o.respBody)
	}
	wantHeaders(t, &o.resp, map[string]string{"content-type": "text/html"})
}

func TestTrailers(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "trailers.lua"))
	cb := newCB()
	req := post("/", "x")
	req.trailers = []header.Field{{Name: "grpc-status", Value: "0"}}
	o := exchange(fac, cb, req, message{})
	wantHeaders(t, &o.reqTrailers, map[string]string{"x-seen": "0"})
	if v, _ := cb.dyn.Get("lua", "trailers"); v != "yes" {
		t.Errorf("dynamic metadata trailers = %v", v)
	}
	// Without trailers the wait ends (nil) when the response begins.
	cb = newCB()
	exchange(fac, cb, post("/", "x"), message{})
	if v, _ := cb.dyn.Get("lua", "trailers"); v != "no" {
		t.Errorf("dynamic metadata trailers = %v, want no", v)
	}
	// No body at all: trailers() is nil at once.
	cb = newCB()
	exchange(fac, cb, get("/"), message{})
	if v, _ := cb.dyn.Get("lua", "trailers"); v != "no" {
		t.Errorf("dynamic metadata trailers = %v, want no", v)
	}
}

func TestHeadersImmutableAfterForwarding(t *testing.T) {
	fac := mustCompile(t, inline(`function envoy_on_request(h)
  for c in h:bodyChunks() do end
  h:headers():add("x-late", "1")
end`))
	cb := newCB()
	o := exchange(fac, cb, post("/", "a", "b"), message{})
	if !o.local || len(cb.replies) != 1 || cb.replies[0].status != 500 || cb.replies[0].details != "lua_error" {
		t.Fatalf("want a 500 lua_error, got local=%v replies=%+v", o.local, cb.replies)
	}
	if o.req.Has("x-late") {
		t.Error("forwarded headers were changed")
	}
	if !strings.Contains(cb.logs.text(), "header map can no longer be modified") {
		t.Errorf("log: %s", cb.logs.text())
	}
}

func TestRespond(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "respond.lua"))
	cb := newCB()
	o := exchange(fac, cb, get("/deny"), message{})
	if !o.local || len(o.reqStatus) != 1 || o.reqStatus[0] != stream.LocalReply {
		t.Fatalf("statuses %v", o.reqStatus)
	}
	r := cb.replies[0]
	if r.status != 403 || r.body != "denied" || r.details != "lua_respond" {
		t.Errorf("reply %+v", r)
	}
	want := []header.Field{{Name: "set-cookie", Value: "a=1"}, {Name: "set-cookie", Value: "b=2"}, {Name: "x-reason", Value: "nope"}}
	if fmt.Sprint(r.headers) != fmt.Sprint(want) {
		t.Errorf("reply headers %v, want %v", r.headers, want)
	}
	if strings.Contains(cb.logs.text(), "not reached") {
		t.Error("script went on after respond()")
	}

	cb = newCB()
	o = exchange(fac, cb, post("/after-body", "12345"), message{})
	if !o.local || cb.replies[0].status != 401 || cb.replies[0].body != "saw 5" {
		t.Errorf("respond after body(): %+v", cb.replies)
	}

	cb = newCB()
	o = exchange(fac, cb, get("/pcall"), message{})
	if !o.local || len(cb.replies) != 1 || cb.replies[0].status != 429 {
		t.Errorf("respond in pcall: %+v %s", cb.replies, cb.logs.text())
	}

	// respond() on the response path is a script error.
	cb = newCB()
	o = exchange(fac, cb, get("/"), message{headers: []header.Field{{Name: ":status", Value: "500"}}})
	if !o.local || cb.replies[0].details != "lua_error" || !strings.Contains(cb.logs.text(), "only valid in the request flow") {
		t.Errorf("replies %+v log %s", cb.replies, cb.logs.text())
	}

	// A wait inside pcall fails the request instead of hanging it.
	fac2 := mustCompile(t, inline(`function envoy_on_request(h) pcall(function() return h:body() end) end`))
	cb = newCB()
	if o = exchange(fac2, cb, post("/", "x"), message{}); !o.local || cb.replies[0].status != 500 || !strings.Contains(cb.logs.text(), "inside pcall") {
		t.Errorf("body() in pcall: %+v %s", cb.replies, cb.logs.text())
	}

	// The state survives respond(): the next request on the pool works.
	cb = newCB()
	if o = exchange(fac, cb, get("/ok"), message{}); o.local {
		t.Errorf("request after respond failed: %+v", cb.replies)
	}
}

func httpCallCB() *fakeCB {
	cb := newCB()
	cb.answer = func(cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
		r := &stream.HTTPResponse{}
		switch cluster {
		case "auth":
			r.Headers.Add(":status", "200")
			if h.Value(":path") == "/check" {
				r.Headers.Add("Foo", "bar")
				r.Body = []byte("allowed")
			} else {
				r.Headers.Add("key", "v0")
				r.Headers.Add("key", "v1")
				r.Headers.Add("key", "v2")
			}
			return r, nil
		case "log":
			r.Headers.Add(":status", "204")
			return r, nil
		case "nope":
			return nil, fmt.Errorf("%w %q", proxy.ErrUnknownCluster, cluster)
		case "slow":
			return nil, fmt.Errorf("proxy: http call to %q: %w", cluster, os.ErrDeadlineExceeded)
		}
		return nil, errors.New("connection refused")
	}
	return cb
}

func TestHTTPCall(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "httpcall.lua"))
	cb := httpCallCB()
	o := exchange(fac, cb, get("/sync"), message{})
	wantHeaders(t, &o.req, map[string]string{"x-auth-status": "200", "x-auth-body": "allowed", "x-auth-foo": "bar"})
	calls := cb.httpCalls()
	if len(calls) != 1 || calls[0].cluster != "auth" || calls[0].body != "payload" || calls[0].timeout != 1500*time.Millisecond {
		t.Fatalf("calls %+v", calls)
	}
	if got := calls[0].headers.Fields(); got[0].Name != ":authority" || calls[0].headers.Value("x-token") != "t" || calls[0].headers.Value(":method") != "POST" {
		t.Errorf("call headers %v", got)
	}

	for _, tc := range []struct {
		path string
		want map[string]string
	}{
		{"/options", map[string]string{"x-dup": "v0|v1|v2", "x-body-nil": "true"}},
		{"/last", map[string]string{"x-last": "v2"}},
		{"/timeout", map[string]string{"x-timeout": "504 upstream request timeout"}},
		{"/failure", map[string]string{"x-failure": "503 upstream failure"}},
	} {
		o := exchange(fac, httpCallCB(), get(tc.path), message{})
		wantHeaders(t, &o.req, tc.want)
	}
	cb = httpCallCB()
	exchange(fac, cb, get("/options"), message{})
	if c := cb.httpCalls(); c[0].timeout != 250*time.Millisecond {
		t.Errorf("options timeout %v", c[0].timeout)
	}

	for _, path := range []string{"/unknown", "/badheaders"} {
		cb := httpCallCB()
		o := exchange(fac, cb, get(path), message{})
		if !o.local || cb.replies[0].status != 500 {
			t.Errorf("%s: want 500, got %+v", path, cb.replies)
		}
	}
	cb = httpCallCB()
	exchange(fac, cb, get("/unknown"), message{})
	if !strings.Contains(cb.logs.text(), "http call cluster invalid") {
		t.Errorf("log %s", cb.logs.text())
	}

	for _, path := range []string{"/async", "/async-positional"} {
		cb := httpCallCB()
		o := exchange(fac, cb, get(path), message{})
		if o.local {
			t.Fatalf("%s failed: %+v", path, cb.replies)
		}
		deadline := time.Now().Add(2 * time.Second)
		for len(cb.httpCalls()) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if c := cb.httpCalls(); len(c) != 1 || c[0].cluster != "log" || c[0].body != "event" {
			t.Errorf("%s: calls %+v", path, c)
		}
	}
}

func TestStreamInfoMetadataAndHelpers(t *testing.T) {
	cfg := mustFile(t, "streaminfo.lua")
	cfg.FilterContext, _ = structpb.NewStruct(map[string]any{"key": "filter-level"})
	fac := mustCompile(t, cfg)
	cb := newCB()
	cb.fs.Set("", "auth.result", "allowed")
	cb.fs.Set("", "user.info", map[string]any{"name": "ann", "id": 3.0})
	cb.routeMeta = map[string]map[string]any{FilterName: {"foo": "bar", "nested": map[string]any{"inner": "deep"}}}
	req := get("/")
	req.headers = append(req.headers, header.Field{Name: "authorization", Value: "tok"})
	o := exchange(fac, cb, req, message{})
	if o.local {
		t.Fatalf("failed: %+v\n%s", cb.replies, cb.logs.text())
	}
	wantHeaders(t, &o.req, map[string]string{
		"x-protocol": "HTTP/1.1", "x-route": "r1", "x-local": "127.0.0.1:8080", "x-remote": "10.0.0.1:5555",
		"x-direct-remote": "10.0.0.1:5555", "x-sni": "", "x-ssl-nil": "true",
		"x-dm": "tok/3/b/true", "x-dm-ns": "envoy.filters.http.lua", "x-dm-missing": "nil",
		"x-fs": "allowed", "x-fs-field": "ann", "x-fs-missing": "nil",
		"x-md": "bar", "x-md-keys": "foo=bar,nested=deep", "x-md-missing": "nil",
		"x-ctx":     "filter-level/filter-level",
		"x-ts-type": "number", "x-ts-ms": "true", "x-ts-int": "true", "x-tss-len": "16", "x-tss-ms-len": "13",
		"x-b64": "aGVsbG8Ad29ybGQ=",
	})
	v, _ := cb.dyn.Get(FilterName, "request.info")
	if m, ok := v.(map[string]any); !ok || m["auth"] != "tok" || fmt.Sprint(m["list"]) != "[a b]" {
		t.Errorf("dynamic metadata %#v", v)
	}
	logs := cb.logs.text()
	for _, want := range []string{"DEBUG-4 t", "DEBUG d", "INFO i", "WARN w", "ERROR e", "ERROR+4 c", "INFO via log", "INFO from headers", "DEBUG printed\t1", "filter=" + FilterName, "script=testdata/streaminfo.lua"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func selfSigned(t *testing.T) (*x509.Certificate, *rsa.PrivateKey) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://cluster.local/ns/default/sa/web")
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xabc123),
		Subject:      pkix.Name{CommonName: "client", Organization: []string{"Acme", "Sluice"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"a.example", "b.example"},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestTLS(t *testing.T) {
	cert, _ := selfSigned(t)
	fac := mustCompile(t, mustFile(t, "tls.lua"))
	cb := newCB()
	cb.tlsState = &tls.ConnectionState{
		Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ServerName: "api.example",
		PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}},
	}
	o := exchange(fac, cb, get("/"), message{})
	if o.local {
		t.Fatalf("failed: %s", cb.logs.text())
	}
	sum := sha256.Sum256(cert.Raw)
	wantHeaders(t, &o.req, map[string]string{
		"x-same": "true", "x-presented": "true", "x-validated": "true", "x-digest": fmt.Sprintf("%x", sum),
		"x-subject": "CN=client,O=Acme+O=Sluice", "x-uri": "spiffe://cluster.local/ns/default/sa/web",
		"x-dns": "a.example,b.example", "x-version": "TLSv1.2", "x-cipher": "ECDHE-RSA-AES128-GCM-SHA256",
		"x-cipher-id": "0xc02f", "x-serial": "abc123", "x-cn": "client", "x-org": "Acme,Sluice", "x-valid-from": "true",
		"x-pem": "-----BEGIN%20CERTIFICATE-----", "x-sni": "api.example", "x-local-dns": "0",
	})
}

func TestVerifySignature(t *testing.T) {
	_, key := selfSigned(t)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	data := "signed payload"
	digest := sha256.Sum256([]byte(data))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	fac := mustCompile(t, mustFile(t, "signature.lua"))
	req := get("/")
	req.headers = append(req.headers, header.Field{Name: "x-key", Value: string(der)}, header.Field{Name: "x-sig", Value: string(sig)}, header.Field{Name: "x-data", Value: data})
	cb := newCB()
	o := exchange(fac, cb, req, message{})
	if o.local {
		t.Fatalf("failed: %s", cb.logs.text())
	}
	wantHeaders(t, &o.req, map[string]string{
		"x-ok": "true/nil", "x-bad": "false/Failed to verify digest. Error code: 0",
		"x-md5": "false/md5 is not supported.", "x-junk": "false/Failed to verify digest. Error code: 0",
	})
}

func TestSandbox(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pwned")
	for _, tc := range []struct{ name, code string }{
		{"io.open", `io.open("` + marker + `", "w")`},
		{"os.execute", `os.execute("touch ` + marker + `")`},
		{"os.exit", `os.exit(3)`},
		{"os.getenv", `return os.getenv("HOME")`},
		{"os.remove", `os.remove("` + marker + `")`},
		{"loadfile", `loadfile("/etc/passwd")()`},
		{"dofile", `dofile("/etc/passwd")`},
		{"require os", `require("os").execute("touch ` + marker + `")`},
		{"require io", `require("io")`},
		{"require file", `require("testdata/headers")`},
		{"package", `package.loadlib("x", "y")`},
		{"debug", `debug.getinfo(1)`},
		{"string.dump", `loadstring(string.dump(function() end))()`},
		{"binary chunk", `assert(loadstring("\27Lua"))()`},
		{"setmetatable _G", `setmetatable(_G, nil)`},
		{"getmetatable _G", `getmetatable(_G).__index.os.execute("touch ` + marker + `")`},
		{"getfenv", `getfenv(0).os = nil`},
		{"setfenv", `setfenv(1, {})`},
		{"string lib write", `string.upper = nil`},
		{"string metatable", `getmetatable("").__index.upper = nil`},
		{"string index", `("").__index.upper = nil`},
		{"string.rep", `local s = string.rep("x", 1e9)`},
		{"string.format width", `string.format("%999999999d", 1)`},
		{"channel", `channel.make()`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fac := mustCompile(t, inline(`function envoy_on_request(h)
  if h:headers():get(":path") == "/attack" then
    `+tc.code+`
  end
  h:headers():add("x-ok", tostring(os.execute == nil and io == nil and string.upper ~= nil and os.time ~= nil))
end`))
			cb := newCB()
			o := exchange(fac, cb, get("/attack"), message{})
			if !o.local || len(cb.replies) != 1 || cb.replies[0].status != 500 {
				t.Fatalf("attack did not fail the request: %+v", cb.replies)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the attack had an effect")
			}
			// Another request (the pool made a fresh state) sees an intact sandbox.
			cb = newCB()
			o = exchange(fac, cb, get("/"), message{})
			if o.local || o.req.Value("x-ok") != "true" {
				t.Fatalf("next request: local=%v x-ok=%q %s", o.local, o.req.Value("x-ok"), cb.logs.text())
			}
		})
	}
}

func TestSandboxHarmless(t *testing.T) {
	// Allowed calls that must not do anything to the process.
	fac := mustCompile(t, inline(`function envoy_on_request(h)
  collectgarbage("collect")
  h:headers():add("x-count", collectgarbage("count"))
  h:headers():add("x-date", os.date("!%Y", 0))
  h:headers():add("x-clock", type(os.clock()))
  h:headers():add("x-req", type(require("string").format))
  local n = 0
  for k in pairs(string) do n = n + 1 end
  h:headers():add("x-string-fns", tostring(n > 5))
  h:headers():add("x-mt", tostring(getmetatable(_G)))
end`))
	cb := newCB()
	o := exchange(fac, cb, get("/"), message{})
	if o.local {
		t.Fatal(cb.logs.text())
	}
	wantHeaders(t, &o.req, map[string]string{"x-count": "0", "x-date": "1970", "x-clock": "number", "x-req": "function", "x-string-fns": "true", "x-mt": "protected"})
}

func TestBudgetAndErrors(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "budget.lua"))
	for _, tc := range []struct {
		path, body, log string
		resp            bool
	}{
		{path: "/loop", body: "lua: script exceeded its time budget\n", log: "exceeded its time budget"},
		{path: "/coroutine-loop", body: "lua: script exceeded its time budget\n", log: "exceeded its time budget"},
		{path: "/error", body: "lua: script error\n", log: "testdata/budget.lua:9: attempt to index"},
		{path: "/yield", body: "lua: script error\n", log: "yielded outside a handle call"},
		{path: "/", resp: true, body: "lua: script exceeded its time budget\n", log: "exceeded its time budget"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			cb := newCB()
			var resp message
			if tc.resp {
				resp = message{headers: []header.Field{{Name: ":status", Value: "200"}, {Name: "x-loop", Value: "1"}}}
			}
			start := time.Now()
			o := exchange(fac, cb, get(tc.path), resp)
			if !o.local || len(cb.replies) != 1 || cb.replies[0].status != 500 || cb.replies[0].body != tc.body || cb.replies[0].details != "lua_error" {
				t.Fatalf("want 500 %q, got %+v", tc.body, cb.replies)
			}
			// The budget stops it: bounded by the budget and a margin,
			// not by the loop.
			if el := time.Since(start); el > 200*time.Millisecond*raceScale+3*time.Second {
				t.Errorf("took %v", el)
			}
			if !strings.Contains(cb.logs.text(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, cb.logs.text())
			}
			cb = newCB()
			if o = exchange(fac, cb, get("/fine"), message{}); o.local || o.req.Value("x-ok") != "1" {
				t.Errorf("the next request failed: %+v %s", cb.replies, cb.logs.text())
			}
		})
	}
}

// TestMemoryBudget: a callback that keeps allocating is stopped by the
// memory budget (checked every few milliseconds), with a time budget long
// enough that the memory check is what stops it even under -race.
func TestMemoryBudget(t *testing.T) {
	fac, err := Compiler{TimeBudget: 20 * time.Second}.Compile(mustFile(t, "budget.lua"))
	if err != nil {
		t.Fatal(err)
	}
	cb := newCB()
	start := time.Now()
	o := exchange(fac, cb, get("/hog"), message{})
	if !o.local || len(cb.replies) != 1 || cb.replies[0].status != 500 || cb.replies[0].body != "lua: script exceeded its memory budget\n" {
		t.Fatalf("want 500 memory budget, got %+v", cb.replies)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("took %v", el)
	}
	cb = newCB()
	if o = exchange(fac, cb, get("/fine"), message{}); o.local || o.req.Value("x-ok") != "1" {
		t.Errorf("the next request failed: %+v %s", cb.replies, cb.logs.text())
	}
}

func TestGlobalsDoNotLeak(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "globals.lua"))
	for i := 0; i < 3; i++ {
		cb := newCB()
		o := exchange(fac, cb, get("/"), message{})
		if o.local {
			t.Fatal(cb.logs.text())
		}
		wantHeaders(t, &o.req, map[string]string{"x-seen": "nil", "x-counter": "1", "x-viag": "1", "x-raw": "1", "x-loaded": "1"})
		wantHeaders(t, &o.resp, map[string]string{"x-leaked-in-response": "yes"})
	}
	// The same state served all three: the pool reuses it.
	if n := len(fac.(*factory).def.free); n != 1 {
		t.Errorf("pool holds %d states, want 1", n)
	}
}

func TestPerRoute(t *testing.T) {
	cfg := inline(`function envoy_on_request(h) h:headers():add("x-which", "default") end`)
	cfg.SourceCodes = map[string]*corev3.DataSource{
		"other.lua": {Specifier: &corev3.DataSource_InlineString{InlineString: `function envoy_on_request(h) h:headers():add("x-which", "other") end`}},
	}
	fac := mustCompile(t, cfg)
	c := Compiler{}
	ctx, _ := structpb.NewStruct(map[string]any{"key": "route"})
	perRoute := func(pb *luav3.LuaPerRoute) any {
		o, err := c.CompilePerRoute(pb)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	for _, tc := range []struct {
		name     string
		override any
		want     string
	}{
		{"none", nil, "default"},
		{"disabled", perRoute(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_Disabled{Disabled: true}}), ""},
		{"name", perRoute(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_Name{Name: "other.lua"}}), "other"},
		{"unknown name", perRoute(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_Name{Name: "missing.lua"}}), ""},
		{"inline", perRoute(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_SourceCode{SourceCode: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: `function envoy_on_request(h) h:headers():add("x-which", "inline:" .. h:filterContext().key) end`}}},
			FilterContext: ctx}), "inline:route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cb := newCB()
			cb.override = tc.override
			o := exchange(fac, cb, get("/"), message{})
			if o.local {
				t.Fatal(cb.logs.text())
			}
			if got := o.req.Value("x-which"); got != tc.want {
				t.Errorf("x-which = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	src := func(s string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
	}
	for _, tc := range []struct {
		name string
		cfg  any
		want string
	}{
		{"syntax", inline("function envoy_on_request(h)\n  local x = \n  if then\nend"), `lua: script "default_source_code" line 3`},
		{"syntax in source_codes", &luav3.Lua{SourceCodes: map[string]*corev3.DataSource{"x.lua": src("function envoy_on_request(h) end\nend")}}, `lua: script "x.lua" line 2`},
		{"no entry points", inline("local x = 1"), "defines neither envoy_on_request nor envoy_on_response"},
		{"top-level error", inline("error('boom')"), "boom"},
		{"top-level loop", inline("while true do end"), "time budget"},
		{"missing file", &luav3.Lua{DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "testdata/none.lua"}}}, "no such file"},
		{"both codes", &luav3.Lua{InlineCode: "function envoy_on_request() end", DefaultSourceCode: src("x")}, "only one of"},
		{"package_paths", &luav3.Lua{PackagePaths: []string{"/x/?.lua"}}, "not supported"},
		{"wrong type", &luav3.LuaPerRoute{}, "want *luav3.Lua"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compiler{}.Compile(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "lua: ") {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := (Compiler{}).CompilePerRoute(&luav3.LuaPerRoute{Override: &luav3.LuaPerRoute_SourceCode{SourceCode: src("x(")}}); err == nil {
		t.Error("per-route syntax error accepted")
	}
	if _, err := (Compiler{}).CompilePerRoute(inline("")); err == nil {
		t.Error("wrong per-route type accepted")
	}
	//nolint:staticcheck // the deprecated field still works
	if _, err := (Compiler{}).Compile(&luav3.Lua{InlineCode: "function envoy_on_response(h) end"}); err != nil {
		t.Errorf("inline_code: %v", err)
	}
	// A config without any script is valid (per-route scripts only).
	fac, err := Compiler{}.Compile(&luav3.Lua{})
	if err != nil {
		t.Fatal(err)
	}
	if o := exchange(fac, newCB(), get("/"), message{}); o.local {
		t.Error("empty config failed a request")
	}
}

func TestNoOpScript(t *testing.T) {
	fac := mustCompile(t, inline(`function envoy_on_request(h) end`))
	cb := newCB()
	o := exchange(fac, cb, post("/", "a"), message{chunks: []string{"b"}})
	if o.local || o.reqBody != "a" || o.respBody != "b" {
		t.Fatalf("%+v", o)
	}
	var h header.Map
	h.Add(":path", "/")
	f := fac.NewFilter(cb)
	f.OnRequestHeaders(&h, true)
	f.OnDone()
	allocs := testing.AllocsPerRun(200, func() {
		f := fac.NewFilter(cb)
		f.OnRequestHeaders(&h, true)
		f.OnResponseHeaders(&h, true)
		f.OnDone()
	})
	t.Logf("no-op script: %.0f allocs per stream", allocs)
	if allocs > 4 {
		t.Errorf("a script that calls nothing allocates %.0f times per stream", allocs)
	}
}

func TestConcurrentStreams(t *testing.T) {
	fac := mustCompile(t, mustFile(t, "globals.lua"))
	done := make(chan error)
	for g := 0; g < 8; g++ {
		go func() {
			for i := 0; i < 50; i++ {
				cb := newCB()
				o := exchange(fac, cb, get("/"), message{})
				if o.local || o.req.Value("x-counter") != "1" || o.req.Value("x-seen") != "nil" {
					done <- fmt.Errorf("stream failed: %+v %s", cb.replies, cb.logs.text())
					return
				}
			}
			done <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkHeaderFilter(b *testing.B) {
	fac := mustCompile(b, inline(`function envoy_on_request(h) h:headers():add("x-req", "1") end
function envoy_on_response(h) h:headers():add("x-resp", "2") end`))
	cb := newCB()
	var req, resp header.Map
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.Reset()
		req.Add(":method", "GET")
		req.Add(":path", "/")
		resp.Reset()
		resp.Add(":status", "200")
		f := fac.NewFilter(cb)
		if f.OnRequestHeaders(&req, true) != stream.Continue || f.OnResponseHeaders(&resp, true) != stream.Continue {
			b.Fatal(cb.logs.text())
		}
		f.OnDone()
	}
}

func BenchmarkNoOpScript(b *testing.B) {
	fac := mustCompile(b, inline(`function envoy_on_request(h) end`))
	cb := newCB()
	var req header.Map
	req.Add(":path", "/")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f := fac.NewFilter(cb)
		f.OnRequestHeaders(&req, true)
		f.OnDone()
	}
}

// TestRetainedMemory: a script that fills a table of its top level, shared
// by the streams its state serves, gets that state dropped once it keeps
// more than MaxRetainedBytes; requests keep working on fresh states.
func TestRetainedMemory(t *testing.T) {
	fac := mustCompile(t, inline(`
		local cache = {}
		function envoy_on_request(h)
		  cache[#cache + 1] = string.rep("x", 1024 * 1024)
		  h:headers():add("x-cached", tostring(#cache))
		end`))
	maxSeen := 0
	for i := 0; i < 3*retainedCheckEvery; i++ {
		cb := newCB()
		o := exchange(fac, cb, get("/"), message{})
		if o.local {
			t.Fatalf("request %d failed: %+v", i, cb.replies)
		}
		n, _ := strconv.Atoi(o.req.Value("x-cached"))
		maxSeen = max(maxSeen, n)
		if i == 3*retainedCheckEvery-1 && !strings.Contains(cb.logs.text(), "") {
			t.Log(cb.logs.text())
		}
	}
	// 1 MiB per stream: a state is dropped at its first check past 32 MiB,
	// so no state ever holds more than retainedCheckEvery MiB.
	if maxSeen > retainedCheckEvery {
		t.Fatalf("a state kept %d MiB", maxSeen)
	}
	if maxSeen < MaxRetainedBytes>>20 {
		t.Fatalf("states were dropped too early: at most %d MiB", maxSeen)
	}
}
