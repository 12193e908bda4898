package wasm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
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

// Remote code goes through http_uri.cluster when the running config has
// it (the Callout), and straight to the uri when it does not.
func TestRemoteCodeThroughCluster(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	code := readFile(t, asGuest)
	var direct atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		direct.Add(1)
		w.Write(code)
	}))
	defer srv.Close()
	var viaCluster atomic.Int32
	var gotPath, gotCluster string
	known := "modules"
	callout := func(ctx context.Context, cluster string, h *header.Map, body []byte, timeout time.Duration) (*stream.HTTPResponse, error) {
		if cluster != known {
			return nil, fmt.Errorf("%w %q", proxy.ErrUnknownCluster, cluster)
		}
		viaCluster.Add(1)
		gotCluster = cluster
		gotPath, _ = h.Get(":path")
		resp := &stream.HTTPResponse{Body: code}
		resp.Headers.Add(":status", "200")
		return resp, nil
	}
	c := Compiler{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolSize: 1, Callout: callout}
	compile := func(cluster string) error {
		cfg := config(t, "", "remote")
		cfg.Config.RootId = "as_root"
		cfg.Config.GetVmConfig().Code = &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Remote{Remote: &corev3.RemoteDataSource{
			HttpUri: &corev3.HttpUri{Uri: srv.URL + "/filters/m.wasm?v=2", HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: cluster}, Timeout: durationpb.New(5e9)},
			Sha256:  sha256Hex(code),
		}}}
		f, err := c.Compile(cfg)
		if err == nil {
			f.(*Factory).Close()
		}
		return err
	}
	if err := compile("modules"); err != nil {
		t.Fatal(err)
	}
	if viaCluster.Load() != 1 || direct.Load() != 0 || gotCluster != "modules" || gotPath != "/filters/m.wasm?v=2" {
		t.Fatalf("through cluster %d (%q %q), direct %d", viaCluster.Load(), gotCluster, gotPath, direct.Load())
	}
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // no disk cache: fetch again
	if err := compile("not-running-yet"); err != nil {
		t.Fatal(err)
	}
	if direct.Load() != 1 {
		t.Fatalf("unknown cluster: direct fetches %d, want 1", direct.Load())
	}
}
