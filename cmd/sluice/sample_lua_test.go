package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/samples/lua/auth/authsvc/svc"
	"github.com/sluice-proxy/sluice/xds"
)

// echoHeaders answers with the request headers it got, one per line, and
// a response header for the script to remove.
func echoHeaders(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "origin/1.0")
	for _, k := range []string{"X-User", "X-Client-Address", "X-Tag"} {
		fmt.Fprintf(w, "%s=%s\n", k, strings.Join(r.Header.Values(k), "|"))
	}
}

func getWith(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestSampleLuaHeaders(t *testing.T) {
	app := newUpstream(t, echoHeaders)
	res, err := loadDSL("../../samples/lua/headers/headers.sluice")
	if err != nil {
		t.Fatal(err)
	}
	snap := res.Snapshot
	snap.Listeners[0].Address = "127.0.0.1:0"
	snap.Clusters[0].Endpoints[0].Address = app.addr()
	srv := startServer(t, snap)
	url := "http://" + srv.ListenerAddr("public").String() + "/"
	for name, c := range map[string]*http.Client{"HTTP/1.1": {}, "HTTP/2": h2cClient()} {
		t.Run(name, func(t *testing.T) {
			resp, body := getWith(t, c, url, "x-user", "admin", "x-tag", "a", "x-tag", "b")
			want := "X-User=\nX-Client-Address=127.0.0.1:"
			if !strings.HasPrefix(body, want) || !strings.Contains(body, "\nX-Tag=a,b\n") {
				t.Errorf("origin saw:\n%s", body)
			}
			if resp.Header.Get("Server") != "" || resp.Header.Get("X-Served-By") != "sluice+lua" || resp.Header.Get("X-Protocol") != name {
				t.Errorf("response headers %v", resp.Header)
			}
		})
	}
}

func TestSampleLuaAuth(t *testing.T) {
	app := httptest.NewServer(svc.App())
	defer app.Close()
	auth := httptest.NewServer(svc.Auth())
	defer auth.Close()
	snap, err := xds.LoadBootstrapFile("../../samples/lua/auth/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	snap.Admin = nil
	snap.Listeners[0].Address = "127.0.0.1:0"
	for _, c := range snap.Clusters {
		u := map[string]string{"app": app.URL, "auth": auth.URL}[c.Name]
		c.Endpoints[0].Address = strings.TrimPrefix(u, "http://")
	}
	srv := startServer(t, snap)
	url := "http://" + srv.ListenerAddr("ingress").String() + "/"
	for _, tc := range []struct {
		name   string
		hdr    []string
		status int
		body   string
	}{
		{"no credentials", nil, 401, "missing credentials\n"},
		{"refused", []string{"authorization", "Bearer nope"}, 403, "forbidden\n"},
		{"accepted", []string{"authorization", "Bearer let-me-in"}, 200, "hello alice (credentials seen by the app: false)\n"},
		{"no impersonation", []string{"authorization", "Bearer let-me-in", "x-user", "root"}, 200, "hello alice (credentials seen by the app: false)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := getWith(t, http.DefaultClient, url, tc.hdr...)
			if resp.StatusCode != tc.status || body != tc.body {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tc.status, tc.body)
			}
			if tc.status == 401 && resp.Header.Get("Www-Authenticate") != "Bearer" {
				t.Errorf("www-authenticate = %q", resp.Header.Get("Www-Authenticate"))
			}
		})
	}
	_, stats := get(t, "http://"+srv.AdminAddr()+"/stats")
	if !strings.Contains(stats, "cluster.auth.upstream_rq_total: 3") {
		t.Errorf("auth calls not in the auth cluster's stats:\n%s", grepLines(stats, "cluster.auth."))
	}
}

func TestSampleLuaBodyRewrite(t *testing.T) {
	site := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, ".json"):
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"next":"http://backend.internal:8080/p/2","self":"http://backend.internal:8080/p/1"}`)
		case strings.HasSuffix(r.URL.Path, ".bin"):
			w.Header().Set("Content-Type", "application/octet-stream")
			io.WriteString(w, "http://backend.internal:8080/raw")
		default:
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, `<a href="http://backend.internal:8080/a">a</a>`)
		}
	})
	res, err := loadDSL("../../samples/lua/body-rewrite/rewrite.sluice")
	if err != nil {
		t.Fatal(err)
	}
	snap := res.Snapshot
	snap.Listeners[0].Address = "127.0.0.1:0"
	snap.Clusters[0].Endpoints[0].Address = site.addr()
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("public").String()
	for _, tc := range []struct {
		path, body, count string
	}{
		{"/pages/index.html", `<a href="https://www.example.com/a">a</a>`, "1"},
		{"/pages/list.json", `{"next":"https://www.example.com/p/2","self":"https://www.example.com/p/1"}`, "2"},
		{"/pages/file.bin", "http://backend.internal:8080/raw", ""},
		{"/other/index.html", `<a href="http://backend.internal:8080/a">a</a>`, ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := getWith(t, http.DefaultClient, base+tc.path)
			if body != tc.body || resp.Header.Get("X-Links-Rewritten") != tc.count {
				t.Errorf("got %q (x-links-rewritten %q), want %q (%q)", body, resp.Header.Get("X-Links-Rewritten"), tc.body, tc.count)
			}
			if cl := resp.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(body)) {
				t.Errorf("content-length %s for %d bytes", cl, len(body))
			}
		})
	}
}

func TestSampleLuaPerRoute(t *testing.T) {
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") })
	snap, err := xds.LoadBootstrapFile("../../samples/lua/per-route/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	snap.Admin = nil
	snap.Listeners[0].Address = "127.0.0.1:0"
	snap.Clusters[0].Endpoints[0].Address = app.addr()
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("ingress").String()
	for _, tc := range []struct {
		path   string
		hdr    []string
		status int
		body   string
		script string
	}{
		{"/healthz", nil, 200, "ok\n", ""},
		{"/admin/", nil, 403, "admins only\n", ""},
		{"/admin/", []string{"x-admin-key", "s3cret"}, 200, "hello\n", "admin-only"},
		{"/beta/", nil, 200, "hello\n", "beta"},
		{"/", nil, 200, "hello\n", "default"},
	} {
		t.Run(tc.path+tc.script, func(t *testing.T) {
			resp, body := getWith(t, http.DefaultClient, base+tc.path, tc.hdr...)
			if resp.StatusCode != tc.status || body != tc.body || resp.Header.Get("X-Script") != tc.script {
				t.Errorf("got %d %q x-script=%q, want %d %q %q", resp.StatusCode, body, resp.Header.Get("X-Script"), tc.status, tc.body, tc.script)
			}
		})
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
