package main

import (
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestWasmRootContextCallout: a proxy-wasm plugin's root context (on its
// tick, with no stream) calls a cluster of the running config through the
// server, and the plugin's filter serves requests meanwhile.
func TestWasmRootContextCallout(t *testing.T) {
	var fromTick atomic.Int64
	auth := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/from-tick" {
			fromTick.Add(1)
		}
	})
	app := newUpstream(t, nil)
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src := `
upstream auth_cluster {
  endpoint ` + auth.addr() + `
}
upstream app {
  endpoint ` + app.addr() + `
}
listener main 127.0.0.1:1 {
  wasm "` + module + `" config "mode=tick-call"
  route all {
    proxy app
  }
}
`
	path := filepath.Join(dir, "tick.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	srv := startServer(t, res.Snapshot)
	eventually(t, "the plugin's call from its root context", func() bool { return fromTick.Load() > 0 })
	resp, err := http.Get("http://" + srv.ListenerAddr("main").String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}
