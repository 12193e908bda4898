package main

import (
	"context"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// TestH2Load drives sluice's h2c listener with h2load: 100 connections,
// each with 100 concurrent streams, every request proxied to an HTTP/1.1
// origin. Bounded by request count (and a timeout), not by time.
func TestH2Load(t *testing.T) {
	h2load := tool(t, "h2load")
	up := newUpstream(t, nil)
	// 10,000 streams in flight at once: over Envoy's default circuit
	// breakers (1,024 requests), which would answer the excess with 503s.
	// The origin speaks HTTP/1.1, so requests queue for 500 connections.
	cl := cluster("up", up.addr())
	cl.CircuitBreakers = config.CircuitBreakers{MaxConnections: 500, MaxPendingRequests: 10000, MaxRequests: 10000, MaxRetries: 3}
	// All 10,000 are in flight at once: on a slow machine (-race, a busy
	// CI) the last ones wait seconds for a connection, longer than the
	// harness's 5 s route timeout.
	rt := prefixRoute("all", "/", "up")
	rt.Action.Timeout = 2 * time.Minute
	srv := startServer(t, snapshot(hcm(rt), cl))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, h2load, "-c100", "-m100", "-n10000", "-t1",
		proxyURL(srv)+"/load").CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no summary in h2load output:\n%s", out)
	}
	if m[4] != "10000" || m[5] != "0" || m[6] != "0" || m[7] != "0" {
		t.Fatalf("h2load: %s\n%s", m[0], out)
	}
	if !regexp.MustCompile(`status codes: 10000 2xx`).Match(out) {
		t.Fatalf("not every response was 2xx:\n%s", out)
	}
	if got := up.hits.Load(); got != 10000 {
		t.Fatalf("origin saw %d requests, want 10000", got)
	}
}
