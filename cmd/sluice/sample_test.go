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
