package compile

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/server"
)

// A compiled program served by the real engine: routing, the rules filter
// on both paths, dynamic local replies and the rate limit.
func TestEndToEnd(t *testing.T) {
	origin := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Origin", name)
			if r.URL.Path == "/api/fail" {
				w.WriteHeader(503)
			}
			fmt.Fprintf(w, "%s %s %s x-route=%s x-echo=%s host=%s", name, r.Method, r.URL.RequestURI(),
				r.Header.Get("X-Route"), r.Header.Get("X-Echo"), r.Host)
		}))
		t.Cleanup(s.Close)
		return s
	}
	v1, v2 := origin("v1"), origin("v2")
	src := fmt.Sprintf(`
upstream api { endpoint %s }
upstream api_v2 { endpoint %s }
listener public 127.0.0.1:8080 {
  on request when request.headers["x-debug"] == "1" {
    set request.headers["x-echo"] = "dbg:" + request.path
  }
  route canary when request.path.startsWith("/api/") && request.headers["x-canary"] == "true" {
    proxy api_v2 timeout 2s
  }
  route limited when request.path == "/limited" {
    ratelimit 2 per 1h
    respond 200 "ok\n"
  }
  route moved when request.url_path == "/old" { redirect 301 "/new" }
  route rewrite when request.path.startsWith("/rw/") {
    rewrite path "/api/rewritten"
    rewrite host "internal.example"
    proxy api
  }
  route api when request.path.startsWith("/api/") {
    set request.headers["x-route"] = "api"
    set response.headers["x-route"] = "api"
    proxy api
  }
  route blocked when source.address.startsWith("10.9.") { deny }
  route fallback { respond 404 "no route for " + request.path + "\n" }
  on response when response.code >= 500 {
    set response.headers["x-upstream-error"] = "true"
  }
}
listener plain 127.0.0.1:8081 {
  route hello when request.path.startsWith("/hello/") { respond 200 "hello " + request.path.substring(7) }
  route tagged when request.path.startsWith("/tagged") {
    set request.headers["x-route"] = "tagged"
    proxy api
  }
  route other { proxy api }
}
`, strings.TrimPrefix(v1.URL, "http://"), strings.TrimPrefix(v2.URL, "http://"))
	res := compileSrc(t, src)
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	res.Snapshot.Listeners[1].Address = "127.0.0.1:0"
	if f := res.Snapshot.Listeners[1].FilterChains[0].HTTP.HTTPFilters[0]; !f.Disabled {
		t.Error("the rules filter of a listener without `on` blocks is on for every route")
	}
	srv := server.New(server.Options{Registry: registry(), Log: slog.New(slog.DiscardHandler), AdminAddress: "off", DrainTimeout: time.Second})
	if err := srv.Apply(res.Snapshot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	base := "http://" + srv.ListenerAddr("public").String()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	plain := "http://" + srv.ListenerAddr("plain").String()
	get := func(path string, kv ...string) (*http.Response, string) {
		t.Helper()
		url := base + path
		if strings.HasPrefix(path, "plain:") {
			url = plain + strings.TrimPrefix(path, "plain:")
		}
		req, _ := http.NewRequest("GET", url, nil)
		for i := 0; i+1 < len(kv); i += 2 {
			req.Header.Set(kv[i], kv[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, tc := range []struct {
		path      string
		kv        []string
		code      int
		body      string // prefix
		hdr, want string
	}{
		{"/api/x", []string{"x-canary", "true"}, 200, "v2 GET /api/x x-route= ", "X-Origin", "v2"},
		{"/api/x", nil, 200, "v1 GET /api/x x-route=api x-echo= ", "X-Route", "api"},
		{"/api/x", []string{"x-debug", "1"}, 200, "v1 GET /api/x x-route=api x-echo=dbg:/api/x ", "", ""},
		{"/api/fail", nil, 503, "v1 GET /api/fail", "X-Upstream-Error", "true"},
		{"/rw/a?q=1", nil, 200, "v1 GET /api/rewritten x-route= x-echo= host=internal.example", "", ""},
		{"/nope", nil, 404, "no route for /nope\n", "", ""},
		{"/old?x=1", nil, 301, "", "Location", "http://" + srv.ListenerAddr("public").String() + "/new"},
		{"/limited", nil, 200, "ok\n", "", ""},
		{"/limited", nil, 200, "ok\n", "", ""},
		{"/limited", nil, 429, "rate limited\n", "Retry-After", "1800"},
		{"plain:/hello/you", nil, 200, "hello you", "", ""},
		{"plain:/tagged", nil, 200, "v1 GET /tagged x-route=tagged ", "", ""},
		{"plain:/other", nil, 200, "v1 GET /other x-route= ", "", ""},
	} {
		resp, body := get(tc.path, tc.kv...)
		if resp.StatusCode != tc.code || !strings.HasPrefix(body, tc.body) || tc.hdr != "" && resp.Header.Get(tc.hdr) != tc.want {
			t.Errorf("GET %s %v: %d %q %s=%q; want %d %q %s=%q", tc.path, tc.kv, resp.StatusCode, body, tc.hdr, resp.Header.Get(tc.hdr), tc.code, tc.body, tc.hdr, tc.want)
		}
	}
}
