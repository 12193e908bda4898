package main

import (
	"io"
	"net/http"
	"testing"

	"github.com/sluice-proxy/sluice/xds"
)

// TestSampleStatic runs samples/static/envoy.yaml as its README says, on
// free ports, and sends the README's requests.
func TestSampleStatic(t *testing.T) {
	api := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/" {
			io.WriteString(w, "hello from service_api\n")
			return
		}
		io.WriteString(w, "service_api home\n")
	})
	v2 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from service_v2\n") })

	snap, err := xds.LoadBootstrapFile("../../samples/static/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	snap.Listeners[0].Address = "127.0.0.1:0"
	snap.Listeners[0].FilterChains[0].HTTP.AccessLogs = nil // keep test output clean
	for _, c := range snap.Clusters {
		switch c.Name {
		case "service_api":
			c.Endpoints[0].Address = api.addr()
		case "service_v2":
			c.Endpoints[0].Address = v2.addr()
		default:
			t.Fatalf("unexpected cluster %q", c.Name)
		}
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("ingress").String()

	for _, tc := range []struct {
		name, path, version, body, routeHeader string
	}{
		{"direct response", "/healthz", "", "ok\n", ""},
		{"api prefix", "/api/", "", "hello from service_api\n", ""},
		{"header to v2", "/", "v2", "hello from service_v2\n", ""},
		{"header wins over path", "/api/", "v2", "hello from service_v2\n", ""},
		{"fallback", "/", "", "service_api home\n", "fallback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+tc.path, nil)
			if tc.version != "" {
				req.Header.Set("x-version", tc.version)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != tc.body || resp.Header.Get("x-sluice-route") != tc.routeHeader {
				t.Errorf("got %d %q route=%q, want 200 %q route=%q", resp.StatusCode, b, resp.Header.Get("x-sluice-route"), tc.body, tc.routeHeader)
			}
		})
	}
}

// TestSampleDSL runs samples/routing/gateway.sluice as its README says, on free
// ports, and sends the README's requests.
func TestSampleDSL(t *testing.T) {
	api := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from api "+r.Header.Get("x-route")+"\n")
	})
	v2 := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/fail" {
			w.WriteHeader(502)
			return
		}
		io.WriteString(w, "hello from api_v2\n")
	})
	res, err := loadDSL("../../samples/routing/gateway.sluice")
	if err != nil {
		t.Fatal(err)
	}
	snap := res.Snapshot
	snap.Listeners[0].Address = "127.0.0.1:0"
	for _, c := range snap.Clusters {
		switch c.Name {
		case "api":
			c.Endpoints[0].Address = api.addr()
		case "api_v2":
			c.Endpoints[0].Address = v2.addr()
		}
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("public").String()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		name, path, canary string
		code               int
		body, header       string
	}{
		{"api", "/api/", "", 200, "hello from api api\n", ""},
		{"canary", "/api/", "true", 200, "hello from api_v2\n", ""},
		{"health", "/healthz", "", 200, "ok\n", ""},
		{"redirect", "/v1/x", "", 308, "", ""},
		{"fallback", "/nope", "", 404, "no route for /nope\n", ""},
		{"upstream error marked", "/api/fail", "true", 502, "", "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+tc.path, nil)
			if tc.canary != "" {
				req.Header.Set("x-canary", tc.canary)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || string(b) != tc.body || resp.Header.Get("x-upstream-error") != tc.header {
				t.Errorf("got %d %q x-upstream-error=%q, want %d %q %q", resp.StatusCode, b, resp.Header.Get("x-upstream-error"), tc.code, tc.body, tc.header)
			}
		})
	}
}
