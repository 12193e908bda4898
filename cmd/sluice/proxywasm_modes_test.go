package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWasmHostFunctionsThroughProxy runs the project's Go guest in each of
// its modes through the running proxy (a .sluice config, real sockets,
// the engine's streams) and checks what reaches the upstream and the
// client: header maps, bodies, local replies, close_stream, properties,
// http_call through a cluster, shared data, metrics in /stats/prometheus,
// and the miscellaneous host calls. (The wasm package's tests check each
// call's edge cases against a fake engine.)
func TestWasmHostFunctionsThroughProxy(t *testing.T) {
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	// The upstream reports the request as it arrived.
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("server", "upstream")
		if r.URL.Path == "/b" || r.URL.Path == "/b-length" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush() // the head goes first: a chunked body
		}
		w.Header().Set("x-secret", "s")
		for _, k := range []string{"x-wasm-req", "x-replace", "x-remove", "x-absent-result", "x-auth", "x-count",
			"x-path", "x-source", "x-route", "x-root-id", "x-ua", "x-missing", "x-prop", "x-log-level", "x-time",
			"x-foreign", "x-effective-bad", "x-done", "x-requests"} {
			fmt.Fprintf(w, "%s=%s\n", k, r.Header.Get(k))
		}
		fmt.Fprintf(w, "body=%s\n", body)
	})
	auth := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	src := fmt.Sprintf("upstream app {\n  endpoint %s\n}\nupstream auth_cluster {\n  endpoint %s\n}\n", app.addr(), auth.addr())
	modes := []string{"headers", "body", "local", "close", "props", "httpcall", "shared", "metrics", "misc"}
	for i, m := range modes {
		src += fmt.Sprintf("listener %s 127.0.0.1:%d {\n  wasm %q config \"mode=%s\" root_id \"test_root\"\n  route r_%s {\n    proxy app\n  }\n}\n",
			m, 1+i, module, m, m)
	}
	path := filepath.Join(t.TempDir(), "modes.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range res.Snapshot.Listeners {
		l.Address = "127.0.0.1:0"
	}
	srv := startServer(t, res.Snapshot)

	type answer struct {
		status int
		header http.Header
		body   string
	}
	do := func(listener, method, path, body string, h ...string) answer {
		t.Helper()
		var rd io.Reader = strings.NewReader(body)
		if chunked, ok := strings.CutPrefix(body, "\x00chunked:"); ok {
			rd = io.MultiReader(strings.NewReader(chunked)) // no length known: chunked
		}
		req, err := http.NewRequest(method, "http://"+srv.ListenerAddr(listener).String()+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", listener, path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return answer{resp.StatusCode, resp.Header, string(b)}
	}
	has := func(t *testing.T, a answer, lines ...string) {
		t.Helper()
		for _, l := range lines {
			if !strings.Contains(a.body, l+"\n") {
				t.Errorf("upstream saw no %q: %d %v\n%s", l, a.status, a.header, a.body)
			}
		}
	}

	t.Run("header maps", func(t *testing.T) {
		a := do("headers", "GET", "/a", "", "x-replace", "old", "x-remove", "gone")
		has(t, a, "x-wasm-req=added", "x-replace=replaced", "x-remove=", "x-absent-result=notfound")
		if a.header.Get("x-wasm-resp") != "yes" || a.header.Get("server") != "wasm" || a.header.Get("x-saw-req") != "added" || a.header.Get("x-secret") != "" {
			t.Errorf("response headers %v", a.header)
		}
	})
	t.Run("bodies", func(t *testing.T) {
		// The guest changes the bodies' lengths after their headers went
		// on, so (as with Envoy) they travel without Content-Length: a
		// request body of unknown length, and an upstream that flushes its
		// head first. (With a Content-Length the codec refuses a body that
		// disagrees with it: the next subtest.)
		a := do("body", "POST", "/b", "\x00chunked:hello world")
		if a.status != 200 || !strings.HasPrefix(a.body, ">RESP:") || !strings.Contains(a.body, "body=REQ:HELLO WORLD\n") || !strings.HasSuffix(a.body, "!") {
			t.Errorf("%d %q", a.status, a.body)
		}
	})
	t.Run("body length mismatch refused", func(t *testing.T) {
		// With Content-Length: 11 already sent upstream, the 15-byte body
		// the guest made is refused, not sent: the upstream connection
		// must not desync (a request-smuggling shape).
		if a := do("body", "POST", "/b-length", "hello world"); a.status != 503 {
			t.Errorf("%d %q, want 503", a.status, a.body)
		}
	})
	t.Run("local reply", func(t *testing.T) {
		a := do("local", "GET", "/x", "")
		if a.status != 403 || a.body != "denied by wasm\n" || a.header.Get("x-wasm") != "local" {
			t.Errorf("%d %q %v", a.status, a.body, a.header)
		}
		g := do("local", "POST", "/grpc", "", "content-type", "application/grpc")
		if g.status != 200 || g.header.Get("grpc-status") != "7" || g.header.Get("grpc-message") != "no way" {
			t.Errorf("gRPC local reply %d %v", g.status, g.header)
		}
	})
	t.Run("close stream", func(t *testing.T) {
		if a := do("close", "GET", "/", ""); a.status != 503 {
			t.Errorf("%d %q", a.status, a.body)
		}
	})
	t.Run("properties", func(t *testing.T) {
		a := do("props", "GET", "/p?q=1", "", "user-agent", "curl/8")
		has(t, a, "x-path=/p?q=1", "x-source=127.0.0.1", "x-route=r_props", "x-root-id=test_root", "x-ua=curl/8", "x-missing=notfound", "x-prop=v1")
	})
	t.Run("http_call through a cluster", func(t *testing.T) {
		a := do("httpcall", "GET", "/r", "")
		has(t, a, "x-auth=ok")
		if auth.hits.Load() == 0 {
			t.Error("the auth cluster was not called")
		}
	})
	t.Run("shared data", func(t *testing.T) {
		first := do("shared", "GET", "/", "")
		second := do("shared", "GET", "/", "")
		var n1, n2 int
		fmt.Sscanf(first.body[strings.Index(first.body, "x-count=")+len("x-count="):], "%d", &n1)
		fmt.Sscanf(second.body[strings.Index(second.body, "x-count=")+len("x-count="):], "%d", &n2)
		if n2 != n1+1 {
			t.Errorf("x-count %d then %d", n1, n2)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		for range 3 {
			do("metrics", "GET", "/", "")
		}
		resp, err := http.Get("http://" + srv.AdminAddr() + "/stats/prometheus")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"goguest_requests_total ", "goguest_gauge 42", "goguest_hist_count "} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/stats/prometheus has no %q", want)
			}
		}
	})
	t.Run("misc host calls", func(t *testing.T) {
		a := do("misc", "GET", "/", "")
		// proxy_get_log_level reports the proxy's level (info here: 2).
		has(t, a, "x-log-level=2", "x-time=ok", "x-foreign=1", "x-effective-bad=2", "x-done=0")
	})
}
