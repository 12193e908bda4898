package main

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// grpcCall makes a gRPC-shaped unary call (an empty message) over h2c
// and returns the response with its trailers read.
func grpcCall(t *testing.T, url string, hdr map[string]string) (*http.Response, time.Duration) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, time.Since(start)
}

// grpcStatus is grpc-status from the trailers, or from the head of a
// trailers-only response.
func grpcStatus(resp *http.Response) string {
	if v := resp.Trailer.Get("Grpc-Status"); v != "" {
		return v
	}
	return resp.Header.Get("Grpc-Status")
}

func TestGRPCRouting(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	defer close(release)
	up := h2cUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		switch r.URL.Path {
		case "/svc/Flaky":
			if calls.Add(1) == 1 {
				// Trailers-only UNAVAILABLE, as a server shedding load sends.
				w.Header().Set("Grpc-Status", "14")
				w.Header().Set("Grpc-Message", "try again")
				w.WriteHeader(200)
				return
			}
		case "/svc/Sleep":
			select {
			case <-r.Context().Done():
				return
			case <-release:
			}
		}
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write([]byte("\x00\x00\x00\x00\x00"))
		w.Header().Set("Grpc-Status", "0")
	})
	cl := cluster("grpc", up)
	cl.Protocol = config.ProtocolHTTP2
	route := prefixRoute("grpc", "/svc/", "grpc")
	route.Action.Timeout = 10 * time.Second
	route.Action.RetryPolicy = &config.RetryPolicy{RetryOn: []string{"unavailable"}, NumRetries: 2, BackoffBase: time.Millisecond}
	empty := cluster("empty") // no endpoints: "no healthy upstream", 503
	srv := startServer(t, snapshot(hcm(route, prefixRoute("none", "/nothing", "empty")), cl, empty))
	base := proxyURL(srv)

	t.Run("retry on unavailable", func(t *testing.T) {
		resp, _ := grpcCall(t, base+"/svc/Flaky", nil)
		if got := grpcStatus(resp); got != "0" || calls.Load() != 2 {
			t.Fatalf("grpc-status %q after %d calls, want 0 after a retry", got, calls.Load())
		}
	})

	t.Run("trailers-only passes through", func(t *testing.T) {
		calls.Store(0)
		route.Action.RetryPolicy.NumRetries = 0
		defer func() { route.Action.RetryPolicy.NumRetries = 2 }()
		srv2 := startServer(t, snapshot(hcm(route), cl))
		resp, _ := grpcCall(t, proxyURL(srv2)+"/svc/Flaky", nil)
		if resp.Header.Get("Grpc-Status") != "14" || resp.Header.Get("Grpc-Message") != "try again" {
			t.Fatalf("head %v trailers %v: want trailers-only UNAVAILABLE", resp.Header, resp.Trailer)
		}
	})

	t.Run("grpc-timeout caps the route timeout", func(t *testing.T) {
		resp, took := grpcCall(t, base+"/svc/Sleep", map[string]string{"grpc-timeout": "200m"})
		if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "4" {
			t.Fatalf("%d %v: want a trailers-only DEADLINE_EXCEEDED", resp.StatusCode, resp.Header)
		}
		if took > 5*time.Second {
			t.Fatalf("took %v: the 10 s route timeout was not capped", took)
		}
	})

	t.Run("local replies are gRPC statuses", func(t *testing.T) {
		for path, want := range map[string]string{"/unrouted": "12", "/nothing": "14"} {
			resp, _ := grpcCall(t, base+path, nil)
			if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != want || resp.Header.Get("Content-Type") != "application/grpc" {
				t.Errorf("%s: %d %v, want 200 with grpc-status %s", path, resp.StatusCode, resp.Header, want)
			}
		}
	})
}

// TestHTTP2PoolOpensConnectionsAtStreamLimit: an upstream allowing two
// concurrent streams per connection gets more connections, not queued
// requests, when more are in flight.
func TestHTTP2PoolOpensConnectionsAtStreamLimit(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	gate := make(chan struct{})
	var inFlight atomic.Int64
	up := h2cUpstreamLimited(t, 2, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		inFlight.Add(1)
		<-gate
		io.WriteString(w, "ok")
	})
	cl := cluster("h2", up)
	cl.Protocol = config.ProtocolHTTP2
	srv := startServer(t, snapshot(hcm(prefixRoute("all", "/", "h2")), cl))
	client := h2cClient()
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(proxyURL(srv) + "/")
			if err != nil {
				t.Error(err)
				return
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}()
	}
	eventually(t, "six requests at the upstream at once", func() bool { return inFlight.Load() == 6 })
	close(gate)
	wg.Wait()
	mu.Lock()
	n := len(conns)
	mu.Unlock()
	if n != 3 {
		t.Fatalf("upstream connections = %d, want 3 (2 streams each)", n)
	}
}
