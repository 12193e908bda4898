package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
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

	ld := startLoad(fmt.Sprintf("http://127.0.0.1:%d/", port), 4, 20000, func(body string) bool { return body == "a" || body == "b" })
	for i := 1; i <= 50; i++ {
		// Written the way editors save (a new file renamed over the old), so
		// each version is read whole and the counts below are exact; a
		// half-written file would be rejected, which is also safe.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(version(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		want := int64(i)
		deadline := time.Now().Add(3 * time.Second)
		for applied.Load()+rejected.Load() < want && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	ld.finish(t)
	if rejected.Load() != 10 || applied.Load() != 40 {
		t.Errorf("applied %d, rejected %d; want 40 and 10", applied.Load(), rejected.Load())
	}
	t.Logf("%d requests across 50 rewrites (%d applied, %d rejected), none failed", ld.ok.Load(), applied.Load(), rejected.Load())
}
