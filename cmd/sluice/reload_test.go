package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDSLReloadUnderLoad rewrites a .sluice file 50 times, one in five
// broken, while a bounded load loop runs; the watcher applies the good ones
// and rejects the bad ones, and no request fails.
func TestDSLReloadUnderLoad(t *testing.T) {
	a := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") })
	b := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b") })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	path := filepath.Join(t.TempDir(), "live.sluice")
	version := func(i int) string {
		target := []string{"a", "b"}[i%2]
		if i%5 == 4 {
			target = "nowhere" // broken: unknown upstream
		}
		return fmt.Sprintf("upstream a {\n  endpoint %s\n}\nupstream b {\n  endpoint %s\n}\nlistener live 127.0.0.1:%d {\n  route all {\n    set request.headers[\"x-version\"] = \"%d\"\n    proxy %s\n  }\n}\n", a.addr(), b.addr(), port, i, target)
	}
	if err := os.WriteFile(path, []byte(version(0)), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, snap)
	var applied, rejected atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go newWatcher(5*time.Millisecond, watchPaths(path, snap)).run(ctx, func() []string {
		next, err := loadConfig(path)
		if err == nil {
			err = srv.Apply(next)
		}
		if err != nil {
			rejected.Add(1)
		} else {
			applied.Add(1)
		}
		return watchPaths(path, next)
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for n := 0; n < 20000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(url)
				if err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (string(body) != "a" && string(body) != "b") {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d body %q", resp.StatusCode, body))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for i := 1; i <= 50; i++ {
		// A distinct size and mtime each time, so the watcher sees it.
		if err := os.WriteFile(path, []byte(version(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		want := int64(i)
		deadline := time.Now().Add(3 * time.Second)
		for applied.Load()+rejected.Load() < want && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if bad.Load() > 0 || ok.Load() == 0 {
		t.Fatalf("%d ok, %d failed; first failure: %v", ok.Load(), bad.Load(), firstErr.Load())
	}
	if rejected.Load() != 10 || applied.Load() != 40 {
		t.Errorf("applied %d, rejected %d; want 40 and 10", applied.Load(), rejected.Load())
	}
	t.Logf("%d requests across 50 rewrites (%d applied, %d rejected), none failed", ok.Load(), applied.Load(), rejected.Load())
}
