package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/proxy"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// maxRemoteModule bounds a downloaded module.
const maxRemoteModule = 256 << 20

// defaultRemoteTimeout applies when http_uri has no timeout.
const defaultRemoteTimeout = 30 * time.Second

// remoteCacheDir is where fetched modules are kept, by sha256.
func remoteCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "sluice", "wasm"), nil
}

// fetchRemote returns the module of vm_config.code.remote: from the disk
// cache when a file with the expected sha256 is there, else downloaded and
// checked against sha256, which is required. The download goes through
// http_uri.cluster, as in Envoy, when the running config has that cluster
// (call reaches the server's clusters: their TLS, pools and stats); when
// it does not — a bootstrap whose cluster arrives in the same snapshot as
// the filter, or no server yet (validate) — straight to http_uri.uri.
func fetchRemote(r *corev3.RemoteDataSource, call stream.HTTPCaller, log *slog.Logger) ([]byte, string, error) {
	uri := r.GetHttpUri().GetUri()
	if uri == "" {
		return nil, "", errors.New("wasm: remote code has no http_uri.uri")
	}
	want := strings.ToLower(r.GetSha256())
	if len(want) != 64 {
		return nil, "", fmt.Errorf("wasm: remote code %s: sha256 is required (64 hex digits)", uri)
	}
	dir, dirErr := remoteCacheDir()
	var cached string
	if dirErr == nil {
		cached = filepath.Join(dir, want+".wasm")
		if b, err := os.ReadFile(cached); err == nil && sha256Hex(b) == want {
			return b, uri, nil
		}
	}
	timeout := r.GetHttpUri().GetTimeout().AsDuration()
	if timeout <= 0 {
		timeout = defaultRemoteTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var b []byte
	if cluster := r.GetHttpUri().GetCluster(); call != nil && cluster != "" {
		var err error
		b, err = fetchThroughCluster(ctx, call, cluster, uri, timeout)
		switch {
		case err == nil:
		case errors.Is(err, errNoSuchCluster):
			if log != nil {
				log.Info("wasm: remote code's cluster is not in the running config; fetching from its uri", "cluster", cluster, "uri", uri)
			}
		default:
			return nil, "", err
		}
	}
	if b == nil {
		var err error
		if b, err = fetchDirect(ctx, uri); err != nil {
			return nil, "", err
		}
	}
	if got := sha256Hex(b); got != want {
		return nil, "", fmt.Errorf("wasm: remote code %s: sha256 is %s, want %s", uri, got, want)
	}
	if dirErr == nil {
		// Best effort: a cache that cannot be written only costs a fetch.
		if err := os.MkdirAll(dir, 0o755); err == nil {
			tmp, err := os.CreateTemp(dir, want+".*.tmp")
			if err == nil {
				_, werr := tmp.Write(b)
				cerr := tmp.Close()
				if werr == nil && cerr == nil {
					_ = os.Rename(tmp.Name(), cached)
				} else {
					_ = os.Remove(tmp.Name())
				}
			}
		}
	}
	return b, uri, nil
}

// errNoSuchCluster: the running config lacks the remote code's cluster.
var errNoSuchCluster = errors.New("wasm: no such cluster")

// fetchThroughCluster GETs uri's path from cluster.
func fetchThroughCluster(ctx context.Context, call stream.HTTPCaller, cluster, uri string, timeout time.Duration) ([]byte, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("wasm: remote code %s: %w", uri, err)
	}
	h := &header.Map{}
	h.Add(":method", "GET")
	h.Add(":path", u.RequestURI())
	h.Add(":authority", u.Host)
	h.Add(":scheme", u.Scheme)
	resp, err := call(ctx, cluster, h, nil, timeout)
	if err != nil {
		if errors.Is(err, proxy.ErrUnknownCluster) {
			return nil, errNoSuchCluster
		}
		return nil, fmt.Errorf("wasm: fetch remote code %s through cluster %q: %w", uri, cluster, err)
	}
	if st, _ := resp.Headers.Get(":status"); st != "200" {
		return nil, fmt.Errorf("wasm: fetch remote code %s through cluster %q: status %s", uri, cluster, st)
	}
	if len(resp.Body) > maxRemoteModule {
		return nil, fmt.Errorf("wasm: remote code %s is larger than %d bytes", uri, maxRemoteModule)
	}
	return resp.Body, nil
}

// fetchDirect GETs uri with net/http.
func fetchDirect(ctx context.Context, uri string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("wasm: remote code %s: %w", uri, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("wasm: fetch remote code: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("wasm: fetch remote code %s: status %s", uri, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRemoteModule+1))
	if err != nil {
		return nil, fmt.Errorf("wasm: fetch remote code %s: %w", uri, err)
	}
	if len(b) > maxRemoteModule {
		return nil, fmt.Errorf("wasm: remote code %s is larger than %d bytes", uri, maxRemoteModule)
	}
	return b, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
