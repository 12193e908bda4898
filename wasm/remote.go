package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
// cache when a file with the expected sha256 is there, else downloaded
// from http_uri.uri (directly with net/http, not through http_uri.cluster)
// and checked against sha256, which is required.
func fetchRemote(r *corev3.RemoteDataSource) ([]byte, string, error) {
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, "", fmt.Errorf("wasm: remote code %s: %w", uri, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("wasm: fetch remote code: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("wasm: fetch remote code %s: status %s", uri, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRemoteModule+1))
	if err != nil {
		return nil, "", fmt.Errorf("wasm: fetch remote code %s: %w", uri, err)
	}
	if len(b) > maxRemoteModule {
		return nil, "", fmt.Errorf("wasm: remote code %s is larger than %d bytes", uri, maxRemoteModule)
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

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
