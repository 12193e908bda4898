package wasm

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestRemoteCode(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	code := readFile(t, asGuest)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Write(code)
	}))
	defer srv.Close()
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolSize: 1}
	remote := func(sha string) error {
		// The AssemblyScript SDK aborts on an empty configuration (a host
		// reports an empty read as NotFound), so give it one.
		cfg := config(t, "", "remote")
		cfg.Config.RootId = "as_root"
		cfg.Config.GetVmConfig().Code = &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
			HttpUri: &corev3.HttpUri{Uri: srv.URL + "/m.wasm", Timeout: durationpb.New(5e9)},
			Sha256:  sha,
		}}}
		f, err := c.Compile(cfg)
		if err == nil {
			f.(*Factory).Close()
		}
		return err
	}
	sum := sha256Hex(code)
	if err := remote(sum); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cache, "sluice", "wasm", sum+".wasm")); err != nil {
		t.Fatalf("not cached on disk: %v", err)
	}
	if err := remote(strings.ToUpper(sum)); err != nil || fetches.Load() != 1 {
		t.Fatalf("second compile: %v, fetches %d (want the disk cache)", err, fetches.Load())
	}
	if err := remote(strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "sha256 is "+sum) {
		t.Errorf("sha mismatch: %v", err)
	}
	if err := remote(""); err == nil || !strings.Contains(err.Error(), "sha256 is required") {
		t.Errorf("no sha: %v", err)
	}
}
