package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// wasmSnapshot compiles a one-listener .sluice config running module with
// the plugin configuration cfg in front of app.
func wasmSnapshot(t *testing.T, module, cfg, app string) *config.Snapshot {
	t.Helper()
	abs, err := filepath.Abs(module)
	if err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("upstream app {\n  endpoint %s\n}\nlistener main 127.0.0.1:1 {\n  wasm %q config %q\n  route all {\n    proxy app\n  }\n}\n", app, abs, cfg)
	path := filepath.Join(t.TempDir(), "wasm.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	return res.Snapshot
}

// Traps (a Go panic, a nil dereference) and a guest running out of its
// memory fail only their own requests (503, the VM replaced) while a
// bounded load loop through the same plugin loses none.
func TestWasmTrapsUnderLoad(t *testing.T) {
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok:"+r.Header.Get("x-trap-mode")) })
	srv := startServer(t, wasmSnapshot(t, "../../wasm/testdata/goguest.wasm", "mode=trap", app.addr()))
	base := "http://" + srv.ListenerAddr("main").String()

	// The load: 4 workers, bounded in count and time. A request may wait
	// while a VM is replaced (slow under -race), so the timeout is long.
	var ok, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	var load sync.WaitGroup
	for range 4 {
		load.Add(1)
		go func() {
			defer load.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			deadline := time.Now().Add(60 * time.Second)
			for n := 0; n < 200 && time.Now().Before(deadline); n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(base + "/")
				if err != nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok:alive" {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("%d %q", resp.StatusCode, body))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	// The traps, one at a time, while the load runs.
	client := &http.Client{Timeout: 30 * time.Second}
	for range 4 {
		for _, path := range []string{"/panic", "/nil", "/oom"} {
			resp, err := client.Get(base + path)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Errorf("%s: status %d, want 503", path, resp.StatusCode)
			}
		}
	}
	close(stop)
	load.Wait()
	if bad.Load() > 0 || ok.Load() == 0 {
		t.Fatalf("requests beside the traps: %d ok, %d failed; first failure: %v", ok.Load(), bad.Load(), firstBad.Load())
	}
	stats := srv.Stats()
	traps := int64(-1)
	for _, m := range stats.Metrics() {
		if m.Name == "wasm.sluice.wasm.0.traps" || (len(m.Name) > 6 && m.Name[len(m.Name)-6:] == ".traps" && m.Name[:5] == "wasm.") {
			traps = int64(m.Value)
		}
	}
	if traps < 12 {
		t.Errorf("wasm traps counted: %d, want 12 (4 each of panic, nil, oom)", traps)
	}
	t.Logf("%d requests through the plugin beside 12 that trapped; traps counted %d", ok.Load(), traps)
}

// A new module (another sha256) replaces the running one in a snapshot
// swap while a bounded load loop runs: no request fails, and new requests
// see the new module.
func TestWasmHotSwapUnderLoad(t *testing.T) {
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	srv := startServer(t, wasmSnapshot(t, "../../wasm/testdata/goguest.wasm", "mode=addheader", app.addr()))
	url := "http://" + srv.ListenerAddr("main").String() + "/"
	load := startLoad(url, 4, 100000, func(body string) bool { return body == "app" })
	time.Sleep(100 * time.Millisecond)
	// samples/wasm/header adds x-wasm: <configuration> to responses.
	swap := wasmSnapshot(t, "../../samples/wasm/header/header.wasm", "swapped", app.addr())
	swap.Listeners[0].Address = srv.ListenerAddr("main").String()
	if err := srv.Apply(swap); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new module serving", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.Header.Get("x-wasm") == "swapped"
	})
	time.Sleep(100 * time.Millisecond)
	load.finish(t)
}
