package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
)

// switchResolver answers every name with its current addresses. Each
// lookup reports the version of the answer the lookup before it returned:
// a refresh starts only after the previous answer was applied, so seeing
// a version reported means the cluster uses it.
type switchResolver struct {
	mu      sync.Mutex
	addrs   []netip.Addr
	version int
	served  int
	applied chan int
}

func (r *switchResolver) set(addrs ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = nil
	for _, a := range addrs {
		r.addrs = append(r.addrs, netip.MustParseAddr(a))
	}
	r.version++
	return r.version
}

func (r *switchResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.served > 0 {
		select {
		case r.applied <- r.served:
		default:
		}
	}
	r.served = r.version
	return append([]netip.Addr(nil), r.addrs...), nil
}

// waitApplied waits until the cluster uses answer version v (bounded).
func (r *switchResolver) waitApplied(t *testing.T, v int) {
	t.Helper()
	for range 10000 {
		select {
		case got := <-r.applied:
			if got >= v {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no DNS refresh")
		}
	}
	t.Fatalf("answer %d never applied", v)
}

// upstreamOn starts a counting origin on ln that answers with the
// request's Host.
func upstreamOn(t *testing.T, ln net.Listener) *countingUpstream {
	u := &countingUpstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		io.WriteString(w, r.Host)
	}))
	u.Listener.Close()
	u.Listener = ln
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// Two origins behind one name (127.0.0.1 and 127.0.0.2 on one port: an
// answer has no port) both take requests through a STRICT_DNS cluster;
// once the name stops resolving to one of them, it gets no new request.
func TestStrictDNSEndToEnd(t *testing.T) {
	var lnA, lnB net.Listener
	for range 20 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(a.Addr().String())
		b, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err == nil {
			lnA, lnB = a, b
			break
		}
		a.Close()
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Skipf("cannot listen on 127.0.0.2: %v", err)
		}
	}
	if lnA == nil {
		t.Skip("no port free on both 127.0.0.1 and 127.0.0.2")
	}
	upA, upB := upstreamOn(t, lnA), upstreamOn(t, lnB)
	_, port, _ := net.SplitHostPort(lnA.Addr().String())

	r := &switchResolver{applied: make(chan int, 1)}
	r.set("127.0.0.1", "127.0.0.2")
	cl := cluster("backend")
	cl.Type = config.ClusterStrictDNS
	cl.Endpoints = []*config.Endpoint{{Address: "backend.test:" + port, Weight: 1, Healthy: true}}
	cl.DNS = config.DNSOptions{RefreshRate: 10 * time.Millisecond, LookupFamily: config.DNSV4Only}
	stats := observe.NewStore()
	srv := server.New(server.Options{Registry: builtins(stats), Stats: stats, Log: testLog(), AdminAddress: "127.0.0.1:0",
		DrainTimeout: 2 * time.Second, Resolver: r})
	route := prefixRoute("all", "/", "backend")
	route.Action.AutoHostRewrite = true // Envoy sends the name the host was resolved from
	if err := srv.Apply(snapshot(hcm(route), cl)); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	shutdown := func() { once.Do(srv.Shutdown) }
	t.Cleanup(shutdown)
	url := proxyURL(srv) + "/"
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(n int) {
		t.Helper()
		for range n {
			resp, err := client.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "backend.test" {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
		}
	}

	get(20)
	if upA.hits.Load() == 0 || upB.hits.Load() == 0 {
		t.Fatalf("hits %d on 127.0.0.1 and %d on 127.0.0.2, want both", upA.hits.Load(), upB.hits.Load())
	}
	if v := gaugeValue(stats, "cluster.backend.membership_total"); v != 2 {
		t.Fatalf("membership_total %v, want 2", v)
	}
	resp, err := client.Get("http://" + srv.AdminAddr() + "/clusters")
	if err != nil {
		t.Fatal(err)
	}
	listing, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"backend::127.0.0.1:" + port + "::hostname::backend.test", "backend::127.0.0.2:" + port + "::rq_total::"} {
		if !strings.Contains(string(listing), want) {
			t.Fatalf("/clusters has no %q:\n%s", want, listing)
		}
	}

	r.waitApplied(t, r.set("127.0.0.1"))
	before, beforeA := upB.hits.Load(), upA.hits.Load()
	get(20)
	if n := upB.hits.Load() - before; n != 0 {
		t.Fatalf("the address gone from the answer got %d requests", n)
	}
	if n := upA.hits.Load() - beforeA; n != 20 {
		t.Fatalf("the remaining address got %d of 20 requests", n)
	}
	if v := gaugeValue(stats, "cluster.backend.membership_total"); v != 1 {
		t.Fatalf("membership_total %v, want 1", v)
	}
	if v := gaugeValue(stats, "cluster.backend.update_success"); v < 2 {
		t.Fatalf("update_success %v, want at least 2", v)
	}

	// Shutdown stops the resolver (no other test here has a DNS cluster).
	shutdown()
	// A stopped goroutine may still be on its way out: look for a while.
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n := runtime.Stack(buf, true)
		if !strings.Contains(string(buf[:n]), "resolveLoop") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a resolver goroutine outlived Shutdown:\n%s", buf[:n])
		}
	}
}

func gaugeValue(s *observe.Store, name string) float64 {
	for _, m := range s.Metrics() {
		if m.Name == name {
			return m.Value
		}
	}
	return -1
}
