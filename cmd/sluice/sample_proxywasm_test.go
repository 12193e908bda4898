package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/samples/lua/auth/authsvc/svc"
	"github.com/sluice-proxy/sluice/xds"
)

// wasmFilterConfig returns the Envoy Wasm config of the first wasm filter
// of snap's first listener.
func wasmFilterConfig(t *testing.T, snap *config.Snapshot) *wasmv3.Wasm {
	t.Helper()
	for _, f := range snap.Listeners[0].FilterChains[0].HTTP.HTTPFilters {
		if w, ok := f.Config.(*wasmv3.Wasm); ok {
			return w
		}
	}
	t.Fatal("no wasm filter in the config")
	return nil
}

// echoInternal answers with the x-internal-* and x-request-tag request
// headers it got, sorted, one per line.
func echoInternal(w http.ResponseWriter, r *http.Request) {
	var names []string
	for k := range r.Header {
		if l := strings.ToLower(k); strings.HasPrefix(l, "x-internal-") || l == "x-request-tag" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "%s=%s\n", strings.ToLower(k), strings.Join(r.Header.Values(k), "|"))
	}
}

func TestSampleWasmHeader(t *testing.T) {
	app := newUpstream(t, echoInternal)
	res, err := loadDSL("../../samples/wasm/header/header.sluice")
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
			resp, body := getWith(t, c, url, "x-internal-user", "admin", "X-Internal-Role", "root", "x-request-tag", "a")
			if body != "x-request-tag=a\n" {
				t.Errorf("origin saw:\n%s", body)
			}
			if resp.StatusCode != 200 || strings.Join(resp.Header.Values("X-Wasm"), "|") != "sluice-sample" {
				t.Errorf("status %d, response headers %v", resp.StatusCode, resp.Header)
			}
		})
	}

	// The module refuses an empty configuration, and the proxy the config.
	t.Run("no config", func(t *testing.T) {
		res, err := loadDSL("../../samples/wasm/header/header.sluice")
		if err != nil {
			t.Fatal(err)
		}
		wasmFilterConfig(t, res.Snapshot).Config.Configuration = nil
		err = server.Check(res.Snapshot, builtins(observe.NewStore()))
		if err == nil || !strings.Contains(err.Error(), "plugin refused its configuration") {
			t.Errorf("check: %v", err)
		}
	})
}

func TestSampleWasmAuth(t *testing.T) {
	app := httptest.NewServer(svc.App())
	defer app.Close()
	auth := httptest.NewServer(svc.Auth())
	defer auth.Close()
	addrs := map[string]string{"app": app.URL, "auth": auth.URL}

	// check runs the README's cases on a proxy in front of app and auth;
	// challenge is the www-authenticate value of a 401.
	check := func(t *testing.T, srv *server.Server, listener, challenge string) {
		url := "http://" + srv.ListenerAddr(listener).String() + "/"
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
				for name, c := range map[string]*http.Client{"HTTP/1.1": {}, "HTTP/2": h2cClient()} {
					resp, body := getWith(t, c, url, tc.hdr...)
					if resp.StatusCode != tc.status || body != tc.body {
						t.Errorf("%s: got %d %q, want %d %q", name, resp.StatusCode, body, tc.status, tc.body)
					}
					if tc.status == 401 && resp.Header.Get("Www-Authenticate") != challenge {
						t.Errorf("%s: www-authenticate = %q, want %q", name, resp.Header.Get("Www-Authenticate"), challenge)
					}
				}
			})
		}
	}

	t.Run("envoy.yaml", func(t *testing.T) {
		snap, err := xds.LoadBootstrapFile("../../samples/wasm/auth/envoy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		snap.Admin = nil
		snap.Listeners[0].Address = "127.0.0.1:0"
		for _, c := range snap.Clusters {
			c.Endpoints[0].Address = strings.TrimPrefix(addrs[c.Name], "http://")
		}
		// The bootstrap names the module relative to the repository's root.
		w := wasmFilterConfig(t, snap)
		if w.Config.GetRootId() != "" {
			t.Errorf("root_id %q, want the default", w.Config.GetRootId())
		}
		local := w.Config.GetVmConfig().GetCode().GetLocal()
		if local.GetFilename() != "samples/wasm/auth/auth.wasm" {
			t.Fatalf("module %q", local.GetFilename())
		}
		local.Specifier = &corev3.DataSource_Filename{Filename: "../../" + local.GetFilename()}
		srv := startServer(t, snap)
		check(t, srv, "ingress", `Bearer realm="api"`)
		_, stats := get(t, "http://"+srv.AdminAddr()+"/stats")
		// Two protocols × three cases that call the auth service.
		if !strings.Contains(stats, "cluster.auth.upstream_rq_total: 6\n") {
			t.Errorf("auth calls not in the auth cluster's stats:\n%s", grepLines(stats, "cluster.auth."))
		}
	})

	t.Run("auth down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().String()
		ln.Close()
		snap, err := xds.LoadBootstrapFile("../../samples/wasm/auth/envoy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		snap.Admin = nil
		snap.Listeners[0].Address = "127.0.0.1:0"
		for _, c := range snap.Clusters {
			c.Endpoints[0].Address = map[string]string{"app": strings.TrimPrefix(app.URL, "http://"), "auth": closed}[c.Name]
		}
		local := wasmFilterConfig(t, snap).Config.GetVmConfig().GetCode().GetLocal()
		local.Specifier = &corev3.DataSource_Filename{Filename: "../../" + local.GetFilename()}
		srv := startServer(t, snap)
		start := time.Now()
		resp, body := getWith(t, http.DefaultClient, "http://"+srv.ListenerAddr("ingress").String()+"/", "authorization", "Bearer let-me-in")
		if resp.StatusCode != 503 || body != "auth service unavailable\n" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v", d)
		}
	})

	t.Run("bad config", func(t *testing.T) {
		snap, err := xds.LoadBootstrapFile("../../samples/wasm/auth/envoy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		w := wasmFilterConfig(t, snap)
		local := w.Config.GetVmConfig().GetCode().GetLocal()
		local.Specifier = &corev3.DataSource_Filename{Filename: "../../" + local.GetFilename()}
		cfg, _ := anypb.New(wrapperspb.String("realm=api"))
		w.Config.Configuration = cfg
		err = server.Check(snap, builtins(observe.NewStore()))
		if err == nil || !strings.Contains(err.Error(), "plugin refused its configuration") {
			t.Errorf("check: %v", err)
		}
	})

	// The module serves the default root id, so a plain `wasm "auth.wasm"`
	// (no config, no root_id) runs it from the rule language.
	t.Run("rule language", func(t *testing.T) {
		mod, err := filepath.Abs("../../samples/wasm/auth/auth.wasm")
		if err != nil {
			t.Fatal(err)
		}
		src := fmt.Sprintf(`upstream app {
  endpoint %s
}

upstream auth {
  endpoint %s
}

listener public 127.0.0.1:8083 {
  wasm %q
  route all {
    proxy app
  }
}
`, strings.TrimPrefix(app.URL, "http://"), strings.TrimPrefix(auth.URL, "http://"), mod)
		path := filepath.Join(t.TempDir(), "auth.sluice")
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := loadDSL(path)
		if err != nil {
			t.Fatal(err)
		}
		res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
		srv := startServer(t, res.Snapshot)
		check(t, srv, "public", "Bearer")
	})

	// dsl/syntax/testdata/filters/auth.wasm is this module: the language
	// reference's example validates with its {"realm": "api"} config.
	t.Run("dslmd", func(t *testing.T) {
		a, err1 := os.ReadFile("../../samples/wasm/auth/auth.wasm")
		b, err2 := os.ReadFile("../../dsl/syntax/testdata/filters/auth.wasm")
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("dsl/syntax/testdata/filters/auth.wasm is not samples/wasm/auth/auth.wasm (%v, %v)", err1, err2)
		}
		var out, errs strings.Builder
		if rc := cmdValidate([]string{"../../dsl/syntax/testdata/dslmd.sluice"}, &out, &errs); rc != 0 {
			t.Errorf("validate: %d\n%s%s", rc, out.String(), errs.String())
		}
	})
}
