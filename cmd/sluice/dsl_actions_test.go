package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDSLActionsEndToEnd runs the actions the e2e tests of dsl/compile do
// not: add/remove headers, rewrite host, deny, abort, delay, mirror.
func TestDSLActionsEndToEnd(t *testing.T) {
	shadow := make(chan string, 4)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s added=%s removed=%q", r.Host, r.Header.Get("x-added"), r.Header.Get("x-secret"))
	})
	mirror := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { shadow <- r.Host + r.URL.Path })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	src := fmt.Sprintf(`upstream up {
  endpoint %s
}
upstream shadow {
  endpoint %s
}
listener l 127.0.0.1:%d {
  route deny when request.path == "/deny" {
    deny
  }
  route abort when request.path == "/abort" {
    abort 503 percent 100
    proxy up
  }
  route slow when request.path == "/slow" {
    delay 150ms
    proxy up
  }
  route mirrored when request.path == "/mirror" {
    proxy up mirror shadow percent 100
  }
  route all {
    add request.headers["x-added"] = "yes"
    remove request.headers["x-secret"]
    rewrite host "backend.internal"
    proxy up
  }
}
`, up.addr(), mirror.addr(), port)
	path := filepath.Join(t.TempDir(), "actions.sluice")
	os.WriteFile(path, []byte(src), 0o644)
	snap, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, snap)
	base := "http://" + srv.ListenerAddr("l").String()
	do := func(p string) (int, string, time.Duration) {
		req, _ := http.NewRequest("GET", base+p, nil)
		req.Header.Set("x-secret", "s3cret")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), time.Since(start)
	}
	if code, _, _ := do("/deny"); code != 403 {
		t.Errorf("deny: %d", code)
	}
	if code, _, _ := do("/abort"); code != 503 {
		t.Errorf("abort: %d", code)
	}
	if code, _, d := do("/slow"); code != 200 || d < 150*time.Millisecond {
		t.Errorf("delay: %d after %v", code, d)
	}
	if code, body, _ := do("/x"); code != 200 || body != `host=backend.internal added=yes removed=""` {
		t.Errorf("header actions: %d %q", code, body)
	}
	if code, _, _ := do("/mirror"); code != 200 {
		t.Errorf("mirror: %d", code)
	}
	select {
	case got := <-shadow:
		if want := fmt.Sprintf("127.0.0.1-shadow:%d/mirror", port); got != want {
			t.Errorf("shadow got %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Error("no mirrored request")
	}
}
